"""The user + item bias baseline (engine/tasks/bias_mf.py): a hand-computed example, a planted
noiseless model, and an independent ridge solve of the one-hot design with numpy's lstsq."""

from __future__ import annotations

import numpy as np
import pytest

from engine.tasks.bias_mf import fit_bias_model


def ridge_biases(users, items, ratings, reg):
    """Oracle: the ridge regression Σ (r − μ − b_u − b_i)² + λ‖b‖² as least squares on the
    one-hot design stacked over √λ·I (index 0 = unseen gets no column: no bias)."""
    users, items = np.asarray(users), np.asarray(items)
    r = np.asarray(ratings, np.float64)
    n_u, n_i = users.max() + 1, items.max() + 1
    design = np.zeros((len(r), (n_u - 1) + (n_i - 1)))
    for row, (u, i) in enumerate(zip(users, items, strict=True)):
        if u > 0:
            design[row, u - 1] = 1.0
        if i > 0:
            design[row, n_u - 1 + i - 1] = 1.0
    stacked = np.vstack([design, np.sqrt(reg) * np.eye(design.shape[1])])
    target = np.concatenate([r - r.mean(), np.zeros(design.shape[1])])
    b, *_ = np.linalg.lstsq(stacked, target, rcond=None)
    return np.concatenate([[0.0], b[: n_u - 1]]), np.concatenate([[0.0], b[n_u - 1 :]])


def test_item_biases_by_hand_when_no_user_is_known() -> None:
    """Users all unseen (0): b_i = Σ (r − μ) / (λ + n_i). Ratings 5, 4 on item 1 and 1 on
    item 2, λ = 1: μ = 10/3, b_1 = (5 + 4 − 20/3) / 3 = 7/9, b_2 = (1 − 10/3) / 2 = −7/6."""
    fit = fit_bias_model([0, 0, 0], [1, 1, 2], [5.0, 4.0, 1.0], reg=1.0)
    assert fit.mu == pytest.approx(10 / 3)
    assert fit.item_bias.tolist() == pytest.approx([0.0, 7 / 9, -7 / 6])
    assert fit.user_bias.tolist() == [0.0]
    # an unseen item (0) and an index past the fitted ones: μ alone
    pred = fit.predict(np.array([0, 0, 0, 5]), np.array([1, 0, 9, 2]))
    assert pred.tolist() == pytest.approx([10 / 3 + 7 / 9, 10 / 3, 10 / 3, 10 / 3 - 7 / 6])


def test_matches_an_independent_ridge_solve() -> None:
    rng = np.random.default_rng(0)
    n = 300
    users = rng.integers(0, 25, n)  # some rows with an unseen user (0)
    items = rng.integers(0, 12, n)
    ratings = rng.integers(1, 6, n).astype(np.float64)
    for reg in (0.5, 10.0):
        fit = fit_bias_model(users, items, ratings, reg=reg)
        b_u, b_i = ridge_biases(users, items, ratings, reg)
        np.testing.assert_allclose(fit.user_bias, b_u, atol=1e-8)
        np.testing.assert_allclose(fit.item_bias, b_i, atol=1e-8)
        assert fit.mu == pytest.approx(ratings.mean())


def test_recovers_a_planted_noiseless_bias_model() -> None:
    """r = 3 + a_u + c_i on a connected subset of pairs; with a negligible λ the fit predicts
    every pair of the grid, held-out ones included, exactly (a shift between the user and
    item biases cancels in every prediction; it is the direction ALS is slow in under a tiny
    λ, so the rounds are capped)."""
    rng = np.random.default_rng(1)
    a = np.concatenate([[0.0], rng.normal(0, 0.7, 8)])
    c = np.concatenate([[0.0], rng.normal(0, 0.5, 6)])
    pairs = [(u, i) for u in range(1, 9) for i in range(1, 7)]
    held = {(2, 3), (5, 1), (8, 6), (1, 4)}
    train = [p for p in pairs if p not in held]
    u, i = np.array(train).T
    fit = fit_bias_model(u, i, 3 + a[u] + c[i], reg=1e-6, max_iter=2000)
    gu, gi = np.array(pairs).T
    np.testing.assert_allclose(fit.predict(gu, gi), 3 + a[gu] + c[gi], atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"users": [], "items": [], "ratings": []}, "no training ratings"),
        ({"users": [1], "items": [1, 2], "ratings": [3.0]}, "1 users, 2 items"),
        ({"users": [-1], "items": [1], "ratings": [3.0]}, ">= 0"),
        ({"users": [1], "items": [1], "ratings": [3.0], "reg": 0.0}, "reg must be > 0"),
    ],
)
def test_bad_inputs_are_errors(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        fit_bias_model(**kwargs)
