"""The text recommender (:mod:`engine.tasks.text_ranker`) on the embedded MiniLM: its scores
against a per-example computation from the stock encoder, a planted zero-shot match, another
catalogue swapped in and put back, a save → Auto-class reload, and truncation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertModel

from engine.models import keep_layers, num_layers, resolve_model_path
from engine.tasks.text_ranker import build_text_ranker, text_ranker_problem, title_vectors

NAME = "text:embedded:all-MiniLM-L6-v2"
TITLES = ["Toy Story (1995)", "GoldenEye (1995)", "Amazon.com Gift Card", "Heat (1995)"]
USERS = ["GoldenEye (1995) | Heat (1995)", "Amazon.com Gift Card", "Toy Story (1995)"]


@pytest.fixture(scope="module")
def parts():
    path = resolve_model_path("embedded:all-MiniLM-L6-v2")
    tok = AutoTokenizer.from_pretrained(path)
    vectors = title_vectors(NAME, TITLES)
    model = build_text_ranker(NAME, len(TITLES) + 1, seed=0)
    model.set_items(vectors)
    return path, tok, vectors, model.eval()


def _encode(tok, texts: list[str]) -> dict[str, torch.Tensor]:
    return tok(texts, padding="max_length", max_length=24, truncation=True, return_tensors="pt")


def test_scores_are_scaled_cosines_of_the_pooled_user_and_each_title(parts) -> None:
    """Oracle: the stock pretrained encoder run on each text alone (no padding), the mean of
    its token states by a plain loop, the projection and cosine written out in float64."""
    path, tok, vectors, model = parts
    with torch.no_grad():  # a trained-looking projection, so the identity is not all we test
        model.classifier.weight.add_(0.01 * torch.randn(384, 384, generator=torch.Generator()))
        model.classifier.bias.normal_(0, 0.01, generator=torch.Generator().manual_seed(1))
        model.log_scale.fill_(math.log(7.0))
    stock = BertModel.from_pretrained(path, add_pooling_layer=False).eval()
    with torch.no_grad():
        got = model(**_encode(tok, USERS)).logits.double().numpy()
        W = model.classifier.weight.double().numpy()
        b = model.classifier.bias.double().numpy()
    assert got.shape == (len(USERS), len(TITLES) + 1)
    for u, text in enumerate(USERS):
        with torch.no_grad():
            h = stock(**tok(text, return_tensors="pt")).last_hidden_state[0].double().numpy()
        pooled = sum(h[t] for t in range(h.shape[0])) / h.shape[0]
        user = W @ pooled + b
        for i in range(len(TITLES) + 1):
            v = vectors[i].astype(np.float64)
            norm = np.linalg.norm(v)
            cos = 0.0 if norm == 0 else float(user @ v / (np.linalg.norm(user) * norm))
            assert got[u, i] == pytest.approx(7.0 * cos, abs=2e-4), (u, i)


def test_untrained_model_ranks_a_users_own_title_first(parts) -> None:
    """Planted: a user whose text *is* one catalogue title scores that title at the scale
    (cosine 1: the same tokens through the same encoder) and above every other title."""
    _, tok, _, _ = parts
    model = build_text_ranker(NAME, len(TITLES) + 1, seed=0).eval()
    model.set_items(title_vectors(NAME, TITLES))
    with torch.no_grad():
        logits = model(**_encode(tok, TITLES)).logits
    for i in range(len(TITLES)):
        assert int(logits[i, 1:].argmax()) == i
        assert float(logits[i, i + 1]) == pytest.approx(20.0, abs=1e-3)


def test_another_catalogue_is_scored_and_the_own_put_back(parts) -> None:
    """Within ``swap_items`` the scores are those of a model built on the other catalogue;
    after it, the model's own catalogue and scores are back."""
    _, tok, vectors, _ = parts
    model = build_text_ranker(NAME, len(TITLES) + 1, seed=0).eval()
    model.set_items(vectors)
    other_titles = ["Heat (1995)", "Casino (1995)"]
    other = title_vectors(NAME, other_titles)
    ref = build_text_ranker(NAME, len(other_titles) + 1, seed=0).eval()
    ref.set_items(other)
    batch = _encode(tok, USERS)
    with torch.no_grad():
        own = model(**batch).logits
        with model.swap_items(other):
            swapped = model(**batch).logits
        after = model(**batch).logits
        want = ref(**batch).logits
    assert swapped.shape == (len(USERS), 3)
    torch.testing.assert_close(swapped, want)
    torch.testing.assert_close(after, own)
    # "Heat (1995)" is in both catalogues: the same score for it in either
    torch.testing.assert_close(swapped[:, 1], own[:, 4])


def test_reload_through_the_auto_classes_and_truncate(parts, tmp_path) -> None:
    _, tok, vectors, model = parts
    model.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    batch = _encode(tok, USERS)
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, model(**batch).logits)
    np.testing.assert_array_equal(again.item_vectors.numpy(), vectors)
    student = keep_layers(model, [0, 5]).eval()
    assert num_layers(student) == 2 and num_layers(model) == 6
    with torch.no_grad():
        out = student(**batch).logits
    assert out.shape == (len(USERS), len(TITLES) + 1)
    assert not torch.allclose(out, model(**batch).logits)


def test_model_names_are_checked() -> None:
    assert text_ranker_problem(NAME) is None
    assert "text:<encoder>" in str(text_ranker_problem("embedded:all-MiniLM-L6-v2"))
    assert text_ranker_problem("text:/no/such/folder") is not None
