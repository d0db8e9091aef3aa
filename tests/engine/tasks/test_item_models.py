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
