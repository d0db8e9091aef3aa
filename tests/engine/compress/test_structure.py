"""Head surgery on decoders (GPT-2's fused Conv1D attention, Llama with grouped-query
attention, the next-item recommenders built on both): removing heads physically gives the
logits of the full model with those heads' contributions zeroed, removes exactly their
parameters and multiply-adds, and survives save → ``load_pruned``."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from engine.compress.structure import (
    head_ids,
    load_pruned,
    remove_heads,
    remove_neurons,
    sync_config,
)
from engine.measure import count_multiply_adds, count_params
from engine.models import layer_list
from engine.tasks.item_models import GPT2ItemRanker, LlamaItemRanker, build_item_model
from tests.conftest import tiny_gpt2, tiny_llama, toy_batches

ITEMS = 50  # catalogue of 49 items + padding id 0


def _item_gpt2() -> nn.Module:
    return build_item_model("scratch:gpt2", ITEMS, seed=3)


def _item_llama() -> nn.Module:
    return build_item_model("scratch:llama", ITEMS, seed=3)


def _batch(model: nn.Module) -> dict[str, torch.Tensor]:
    """Token batches for the tiny classifiers (right-padded); item histories for the item
    models (left-padded, ids 1…49)."""
    if model.config.model_type.startswith("item-"):
        g = torch.Generator().manual_seed(4)
        ids = torch.randint(1, ITEMS, (8, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[:4, :5] = 0
        ids[mask == 0] = 0
        return {"input_ids": ids, "attention_mask": mask}
    b = toy_batches(1, batch_size=8, seed=4)[0]
    return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}


def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _head_dim(model: nn.Module) -> int:
    return model.config.hidden_size // model.config.num_attention_heads


def _zero_head_outputs(model: nn.Module, heads: dict[int, list[int]]) -> None:
    """The definition of removing a head: its slice of the output projection's input no
    longer reaches the residual stream (GPT-2's c_proj is a Conv1D, weight [in, out])."""
    d = _head_dim(model)
    with torch.no_grad():
        for layer, hs in heads.items():
            for h in hs:
                if hasattr(model, "transformer"):
                    model.transformer.h[layer].attn.c_proj.weight[h * d : (h + 1) * d, :] = 0
                else:
                    model.model.layers[layer].self_attn.o_proj.weight[:, h * d : (h + 1) * d] = 0


# uneven removals: several heads in one layer, one in another, none elsewhere; tiny_llama has
# 4 query heads sharing 2 key/value heads, so whole groups {0, 1} / {2, 3} go
CASES: list[tuple[str, Callable[[], nn.Module], dict[int, list[int]]]] = [
    ("gpt2", tiny_gpt2, {0: [1, 3], 2: [0], 3: [0, 1, 2]}),
    ("llama-gqa", tiny_llama, {0: [2, 3], 3: [0, 1]}),
    ("item-gpt2", _item_gpt2, {1: [0], 4: [1]}),
    ("item-llama", _item_llama, {0: [1], 5: [0]}),
]


@pytest.mark.parametrize(("factory", "heads"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_removing_heads_gives_the_logits_of_the_model_with_them_zeroed(factory, heads) -> None:
    model = factory()
    full = copy.deepcopy(model)
    zeroed = copy.deepcopy(model)
    _zero_head_outputs(zeroed, heads)
    blocks = layer_list(model)
    for layer, hs in heads.items():
        remove_heads(blocks[layer], hs)
    batch = _batch(model)
    torch.testing.assert_close(_logits(model, batch), _logits(zeroed, batch), rtol=1e-5, atol=1e-5)
    assert (_logits(model, batch) - _logits(full, batch)).abs().max() > 1e-3  # heads mattered
    n = model.config.num_attention_heads
    assert model.config.pruned_heads == {str(k): sorted(v) for k, v in heads.items()}
    assert [head_ids(b) for b in blocks] == [
        [h for h in range(n) if h not in heads.get(i, [])] for i in range(len(blocks))
    ]


@pytest.mark.parametrize(("factory", "heads"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_removed_heads_take_exactly_their_parameters_and_multiply_adds(factory, heads) -> None:
    """Per query head: Q rows (E·d + d bias), output-projection inputs (d·E); per key/value
    head: K and V rows (2·(E·d + d bias)). Per token, multiply-adds: the projections'
    weights, plus q·kᵀ and attention·v (2·seq·d) per query head."""
    seq = 12
    model = factory()
    cfg = model.config
    e, d, n = cfg.hidden_size, _head_dim(model), cfg.num_attention_heads
    group = n // getattr(cfg, "num_key_value_heads", n)
    bias = 0 if getattr(cfg, "attention_bias", True) is False else d
    params, macs = count_params(model), count_multiply_adds(model, seq)
    for layer, hs in heads.items():
        remove_heads(layer_list(model)[layer], hs)
    q_heads = sum(len(hs) for hs in heads.values())
    kv_heads = q_heads // group
    per_q = e * d + bias + d * e
    per_kv = 2 * (e * d + bias)
    assert params - count_params(model) == q_heads * per_q + kv_heads * per_kv
    per_q_macs = seq * (2 * e * d + 2 * seq * d)
    per_kv_macs = seq * 2 * e * d
    assert macs - count_multiply_adds(model, seq) == q_heads * per_q_macs + kv_heads * per_kv_macs


def test_grouped_query_attention_removes_whole_groups_only() -> None:
    model = tiny_llama()  # 4 query heads, 2 key/value heads: groups {0, 1} and {2, 3}
    block = layer_list(model)[1]
    for split in ([1], [0, 2], [1, 2, 3]):
        with pytest.raises(ValueError, match="whole key/value groups"):
            remove_heads(block, split)
    with pytest.raises(ValueError, match="every head"):
        remove_heads(block, [0, 1, 2, 3])
    assert head_ids(block) == [0, 1, 2, 3]  # a refused cut changes nothing
    remove_heads(block, [0, 1])
    assert block.self_attn.k_proj.weight.shape == (8, 32)  # one KV head of 8 left
    assert block.self_attn.num_key_value_groups == 2  # group size unchanged
    remove_heads(block, [])  # nothing to do
    with pytest.raises(ValueError, match="every head"):
        remove_heads(block, [0, 1])  # current positions of the last group


@pytest.mark.parametrize(("factory", "heads"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_save_then_load_pruned_gives_the_same_model(tmp_path: Path, factory, heads) -> None:
    model = factory()
    blocks = layer_list(model)
    for layer, hs in heads.items():
        remove_heads(blocks[layer], hs)
    for b in blocks:  # and a uniform FFN cut, so the config's width changes too
        remove_neurons(b, list(range(0, 16, 2)))
    sync_config(model)
    model.save_pretrained(tmp_path)
    again = load_pruned(tmp_path)
    assert type(again) is type(model)
    batch = _batch(model)
    torch.testing.assert_close(_logits(again, batch), _logits(model, batch), rtol=0, atol=0)
    assert count_params(again) == count_params(model)
    assert again.config.pruned_heads == model.config.pruned_heads
    assert [head_ids(b) for b in layer_list(again)] == [head_ids(b) for b in blocks]
    if isinstance(again, GPT2ItemRanker | LlamaItemRanker):  # the catalogue head stays tied
        emb = again.get_input_embeddings().weight
        assert again.score.weight.data_ptr() == emb.data_ptr()


def test_the_shape_text_says_what_the_modules_hold() -> None:
    """The description comes from the config; the oracle counts what the modules hold: the
    rows of each layer's query projection (heads × head size) and of its FFN input."""
    from engine.compress.prune import prune_structured_to
    from engine.compress.structure import shape_text, sync_config
    from tests.conftest import tiny_bert

    model = tiny_bert(num_layers=4)
    size = model.config.hidden_size // model.config.num_attention_heads
    prune_structured_to(model, heads_removed=7, neurons_removed=[20] * 4, criterion="magnitude")
    sync_config(model)
    blocks = layer_list(model)
    heads = [b.attention.self.query.weight.shape[0] // size for b in blocks]
    ffn = [b.intermediate.dense.weight.shape[0] for b in blocks]
    assert len(set(heads)) > 1  # uneven: shown as a range
    span = lambda v: str(v[0]) if len(set(v)) == 1 else f"{min(v)}–{max(v)}"  # noqa: E731
    assert shape_text(model.config, len(blocks)) == (
        f"4 layers, {span(heads)} heads, FFN {span(ffn)}"
    )
    assert shape_text(tiny_bert(num_layers=2).config, 2) == "2 layers, 4 heads, FFN 64"
