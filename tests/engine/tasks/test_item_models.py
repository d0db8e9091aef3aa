"""The sequence recommenders (:mod:`engine.tasks.item_models`): the stock Hugging Face
``*ForSequenceClassification`` classes with the same weights are the oracle for their logits;
a save → Auto-class reload round trip; causal prefix cuts for the every-position scores."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    GPT2ForSequenceClassification,
    LlamaForSequenceClassification,
)

from engine.tasks.item_models import build_item_model, item_model_problem


@pytest.mark.parametrize(
    ("preset", "stock"),
    [
        ("scratch:gpt2", GPT2ForSequenceClassification),
        ("scratch:llama", LlamaForSequenceClassification),
    ],
)
def test_item_models_give_the_stock_classifiers_logits_and_reload(preset, stock, tmp_path) -> None:
    model = build_item_model(preset, 41, seed=3).eval()
    ref = stock(model.config).eval()  # the stock class, scoring every position then pooling
    ref.load_state_dict(model.state_dict())
    ids = torch.randint(1, 41, (5, 9), generator=torch.Generator().manual_seed(0))
    ids[:3, :4] = 0  # left padding
    mask = (ids != 0).long()
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # counted from each row's first item
        want = ref(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert got.shape == (5, 41)
    torch.testing.assert_close(got, want)  # float32 rounding: one row vs all positions
    emb = model.get_input_embeddings().weight
    assert model.score.weight.data_ptr() == emb.data_ptr()  # tied item embeddings
    model.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(again) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids, attention_mask=mask).logits, got)


def test_a_local_config_folder_is_trained_from_scratch_with_the_catalogue_width(tmp_path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {"model_type": "gpt2", "n_layer": 3, "n_embd": 32, "n_head": 4, "n_positions": 64}
        )
    )
    assert item_model_problem(str(tmp_path)) is None
    model = build_item_model(str(tmp_path), 77)
    assert model.config.n_layer == 3 and model.config.num_labels == 77
    assert model.get_input_embeddings().weight.shape == (77, 32)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert "bert" in item_model_problem(str(tmp_path))
    assert "unknown preset" in item_model_problem("scratch:gpt9")


@pytest.mark.parametrize("preset", ["scratch:gpt2", "scratch:llama"])
def test_a_history_scores_the_same_whatever_the_padding_width(preset) -> None:
    model = build_item_model(preset, 30, seed=2).eval()
    short = torch.tensor([[3, 4, 5]])
    wide = torch.tensor([[0, 0, 0, 3, 4, 5]])
    with torch.no_grad():
        a = model(input_ids=short, attention_mask=torch.ones_like(short)).logits
        b = model(input_ids=wide, attention_mask=(wide != 0).long()).logits
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("preset", ["scratch:gpt2", "scratch:llama"])
def test_every_position_scores_equal_the_pooled_scores_of_the_prefix(preset) -> None:
    """Causal blocks: the scores at position t are the model's scores for the input cut
    after t (same positions, same left padding)."""
    model = build_item_model(preset, 30, seed=1).eval()
    ids = torch.tensor([[0, 0, 5, 9, 3, 12], [7, 1, 2, 8, 4, 6]])
    mask = (ids != 0).long()
    with torch.no_grad():
        every = model(input_ids=ids, attention_mask=mask, all_positions=True).logits
        assert every.shape == (2, 6, 30)
        for t in range(2, 6):
            cut = model(input_ids=ids[:, : t + 1], attention_mask=mask[:, : t + 1]).logits
            torch.testing.assert_close(every[:, t], cut)


@pytest.mark.parametrize("preset", ["scratch:gpt2", "scratch:llama"])
def test_title_init_puts_items_on_the_titles_principal_axes(preset) -> None:
    """Oracle: the eigenvectors of the title vectors' covariance (numpy ``eigh``, not the SVD
    the code uses): each embedding column is the items' coordinate on one principal axis, up to
    sign and scale; every column has the embeddings' former standard deviation; padding and
    the tied head follow."""
    import numpy as np

    from engine.tasks.item_models import init_from_titles

    model = build_item_model(preset, 41, seed=0)
    emb = model.get_input_embeddings().weight
    before_std = float(emb[1:].detach().double().std())
    pad = emb[0].detach().clone()
    spare = emb[1:, 40:].detach().clone()  # 40 items: at most 39 axes after centring
    rng = np.random.default_rng(0)
    # planted: 40 items in 384-d whose variance lies mostly along a few directions
    vectors = np.zeros((41, 384))
    vectors[1:] = rng.normal(size=(40, 8)) * np.arange(8, 0, -1) @ rng.normal(size=(8, 384))
    vectors[1:] += 0.01 * rng.normal(size=(40, 384))
    init_from_titles(model, vectors)
    got = emb[1:].detach().double().numpy()
    x = vectors[1:] - vectors[1:].mean(0)
    _, eigvecs = np.linalg.eigh(x.T @ x)
    for j in range(4):  # the top axes are well separated here
        axis = x @ eigvecs[:, -1 - j]
        r = np.corrcoef(axis, got[:, j])[0, 1]
        assert abs(r) == pytest.approx(1.0, abs=1e-6), j
    rank = np.linalg.matrix_rank(x)
    assert rank == 39
    np.testing.assert_allclose(got[:, :rank].std(0), before_std, rtol=1e-4)
    torch.testing.assert_close(emb[1:, 40:], spare)  # beyond the rank: as initialised
    torch.testing.assert_close(emb[0], pad)
    # two items with the same title get the same coordinates on every axis
    vectors[5] = vectors[9]
    init_from_titles(model, vectors)
    torch.testing.assert_close(emb[5, :38], emb[9, :38])
    head = model.score.weight if hasattr(model, "score") else None
    assert head is not None and head.data_ptr() == emb.data_ptr()  # tied: the head follows
