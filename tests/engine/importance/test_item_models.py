"""Every importance method on the next-item models (GPT-2 / Llama over item ids, left-padded
histories, a head that scores the last real position): the registry contract, and planted
structures that a method reading padding (or position 0) would miss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import engine.importance  # noqa: F401  (registers every method)
from engine.importance import IMPORTANCE
from engine.importance._common import is_causal, pooled
from engine.importance.activation_patching import corrupt
from engine.importance.config import ImportanceConfig
from engine.models import layer_list
from engine.tasks.item_models import build_item_model
from tests.conftest import tiny_bert, tiny_gpt2, toy_batches

V = 200  # item ids 1…199, 0 = padding
FAMILIES = ("gpt2", "llama")
FAST = {"conductance_steps": 4, "mc_samples": 3, "bootstrap_samples": 200}
METHODS = IMPORTANCE.names()


def item_model(family: str, num_items: int = V) -> torch.nn.Module:
    """The 6-layer ``scratch:<family>`` preset, randomly initialised, in eval mode."""
    return build_item_model(f"scratch:{family}", num_items).eval()


def item_batches(
    n_batches: int = 2, batch_size: int = 6, seq: int = 10, seed: int = 0, min_len: int = 1
) -> list[dict[str, torch.Tensor]]:
    """Left-padded histories of ``min_len``…``seq`` random items (most rows padded), each
    labelled with a random next item."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.zeros(batch_size, seq, dtype=torch.long)
        for i in range(batch_size):
            n = min_len + i % (seq - min_len + 1)
            ids[i, seq - n :] = torch.randint(1, V, (n,), generator=g)
        labels = torch.randint(1, V, (batch_size,), generator=g)
        out.append({"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": labels})
    return out


def plant_identity(model: torch.nn.Module, layer: int) -> None:
    """Zero a pre-LN block's output projections: its output then equals its input."""
    for name, mod in layer_list(model)[layer].named_modules():
        if name.endswith(("c_proj", "o_proj", "down_proj")):
            with torch.no_grad():
                mod.weight.zero_()
                if getattr(mod, "bias", None) is not None:
                    mod.bias.zero_()


# --- contract: generated from the registry ---------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_gives_one_finite_score_per_layer_on_item_models(
    method: str, family: str
) -> None:
    cfg = ImportanceConfig(task="next_item", **FAST)
    batches = item_batches()
    first = IMPORTANCE.get(method)(item_model(family), batches, cfg=cfg)
    again = IMPORTANCE.get(method)(item_model(family), batches, cfg=cfg)
    assert first.method == method
    assert len(first.scores) == 6 and all(math.isfinite(v) for v in first.scores)
    assert first.num_examples == 12 and first.batch_sizes == (6, 6)
    assert first.scores == again.scores  # deterministic under the seed
    if first.per_example is not None:
        rows = np.asarray(first.per_example)
        assert rows.shape == (12, 6) and np.isfinite(rows).all()


# --- positions: the example is the last real token of a left-padded row ------------------------


def test_pooled_reads_the_first_and_last_real_token_whatever_the_padding_side() -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 6, 3, generator=g)
    mask = torch.tensor(
        [
            [0, 0, 1, 1, 1, 1],  # left-padded
            [0, 0, 0, 0, 0, 1],  # left-padded, one token
            [1, 1, 1, 0, 0, 0],  # right-padded
            [1, 1, 1, 1, 1, 1],
        ]
    )
    for i in range(4):
        real = [t for t in range(6) if mask[i, t]]
        torch.testing.assert_close(pooled(hidden, mask, "cls")[i], hidden[i, real[0]])
        torch.testing.assert_close(pooled(hidden, mask, "last")[i], hidden[i, real[-1]])
        torch.testing.assert_close(pooled(hidden, mask, "mean")[i], hidden[i, real].mean(0))


def test_decoders_are_causal_and_encoders_are_not() -> None:
    assert is_causal(item_model("gpt2")) and is_causal(item_model("llama"))
    assert is_causal(tiny_gpt2(num_layers=2)) and not is_causal(tiny_bert(num_layers=2))


def scale_attention_output(model: torch.nn.Module, layer: int, factor: float) -> None:
    for name, mod in layer_list(model)[layer].named_modules():
        if name in ("attn.c_proj", "self_attn.o_proj"):
            with torch.no_grad():
                mod.weight.mul_(factor)


@pytest.mark.parametrize("family", FAMILIES)
def test_mutual_info_finds_the_target_at_the_last_real_position(family: str) -> None:
    """Planted: the target is the history's last item; blocks 0–2 and 4–5 are identities and
    block 3's attention update is scaled ×1000, drowning the last item's embedding in a mix
    of the whole history. So the state at the last real position *is* the target's embedding
    (plus GPT-2's constant last-position embedding) up to block 2 — an exact function of the
    target, a large MI — and barely informative after block 3. Every row is left-padded: a
    method pooling position 0 reads padding (nothing about the target), one taking the last
    real token as ``mask.sum() − 1`` reads a random earlier item."""
    model = item_model(family)
    for layer in (0, 1, 2, 4, 5):
        plant_identity(model, layer)
    scale_attention_output(model, 3, 1e3)
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(2):
        b = item_batches(1, 48, 8, seed=int(torch.randint(0, 10**6, (1,), generator=g)))[0]
        b["input_ids"][:, :2] = 0  # at least two padding positions in every row
        last = torch.randperm(V - 1, generator=g)[:48] + 1  # distinct targets
        b["input_ids"][:, -1] = last
        b["attention_mask"] = (b["input_ids"] != 0).long()
        b["labels"] = last
        batches.append(b)
    got = {
        how: IMPORTANCE.get("mutual_info")(
            model, batches, cfg=ImportanceConfig(task="next_item", mi_pooling=how)
        ).scores
        for how in ("last", "head")
    }
    s = got["last"]
    assert s[0] == s[1] == s[2] > 1.0, s  # measured 2.6 (GPT-2), 2.9 (Llama)
    assert max(s[3:]) < 0.1 * s[0], s  # measured 0.0
    assert got["head"] == s  # a causal decoder's head reads the last real token


def test_head_pooling_is_cls_on_encoders_and_last_on_decoder_classifiers() -> None:
    batches = toy_batches(2, 8, 10)  # right-padded, class labels
    for model, same_as in ((tiny_bert(num_layers=2), "cls"), (tiny_gpt2(num_layers=2), "last")):
        head, ref = (
            IMPORTANCE.get("mutual_info")(model, batches, cfg=ImportanceConfig(mi_pooling=h))
            for h in ("head", same_as)
        )
        assert head.scores == ref.scores


# --- planted identities and uniform attention on left-padded item models --------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_block_scores_zero_and_lowest_on_item_models(family: str) -> None:
    model, batches = item_model(family), item_batches(2, 6, 10, min_len=2)
    plant_identity(model, 2)
    cfg = ImportanceConfig(task="next_item", ablation_metric="kl", mc_metric="variance", **FAST)
    got = {
        m: IMPORTANCE.get(m)(model, batches, cfg=cfg).scores
        for m in ("ablation", "block_influence", "mc_dropout")
    }
    for m, s in got.items():
        # skipping, or dropping out, a block whose output equals its input changes nothing
        assert s[2] == 0.0 and min(s[i] for i in (0, 1, 3, 4, 5)) > 0.0, (m, s)
    loss = IMPORTANCE.get("ablation")(model, batches, cfg=ImportanceConfig(task="next_item"))
    rr = IMPORTANCE.get("ablation_accuracy")(model, batches, cfg=cfg)
    patched = IMPORTANCE.get("activation_patching")(model, batches, cfg=cfg)
    assert loss.scores[2] == 0.0 and rr.scores[2] == 0.0 and patched.scores[2] == 0.0


def uniform_attention(model: torch.nn.Module) -> None:
    """Zero every query and key projection: all attention logits equal, so each query
    attends uniformly to the keys it may see (real, not in the future)."""
    hidden = model.config.hidden_size
    with torch.no_grad():
        for block in layer_list(model):
            if hasattr(block, "attn"):  # GPT-2: c_attn = [q | k | v] columns
                block.attn.c_attn.weight[:, : 2 * hidden] = 0.0
                block.attn.c_attn.bias[: 2 * hidden] = 0.0
            else:
                block.self_attn.q_proj.weight.zero_()
                block.self_attn.k_proj.weight.zero_()


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_attention_has_normalised_entropy_one_on_left_padded_rows(family: str) -> None:
    """Uniform over the n_q allowed keys is entropy log n_q, normalised 1 for every layer and
    example — if padding keys were counted as allowed, the entropy would be below log n_q'
    for the larger n_q' and the score below 1."""
    model, batches = item_model(family), item_batches(2, 6, 10, min_len=2)
    uniform_attention(model)
    got = IMPORTANCE.get("attention")(
        model, batches, cfg=ImportanceConfig(task="next_item", attention_score="entropy")
    )
    np.testing.assert_allclose(np.asarray(got.per_example), 1.0, rtol=0, atol=1e-6)


# --- activation patching: corruption by item ids ----------------------------------------------


def test_token_noise_corrupts_items_with_items_and_never_with_padding() -> None:
    """A catalogue of two items (ids 1, 2; 0 = padding): a uniform draw over the vocabulary
    would turn about a third of the flipped items into padding, moving the position the head
    scores. Every real position must still hold an item, padding stays padding, and the
    noise does change some items."""
    model = item_model("gpt2", num_items=3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 3, (16, 12), generator=g)
    ids[:8, :4] = 0
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": ids[:, -1]}
    bad = corrupt(model, batch, ImportanceConfig(task="next_item", patch_noise_frac=1.0))
    real = batch["attention_mask"].bool()
    assert bool((bad["input_ids"][real] >= 1).all())
    assert bool((bad["input_ids"][~real] == 0).all())
    assert bool((bad["input_ids"] != ids).any())
    torch.testing.assert_close(bad["labels"], batch["labels"])
