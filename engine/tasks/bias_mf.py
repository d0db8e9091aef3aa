"""The baseline predictor of collaborative filtering: ``r̂_ui = μ + b_u + b_i``.

Koren, "Factorization meets the neighborhood" (KDD 2008), §2.1: with μ the training mean
rating, the user and item biases minimise the regularised squared error::

    Σ_(u,i) ∈ train (r_ui − μ − b_u − b_i)² + λ (Σ_u b_u² + Σ_i b_i²)

a ridge regression on the one-hot user and item indicators. It is solved here by alternating
least squares (each half-step is the exact minimiser over one block of biases given the
other: ``b_i = Σ_u (r_ui − μ − b_u) / (λ + n_i)``, then the same for users), which converges
to the unique optimum because the objective is strictly convex.

Index 0 is reserved for a user or item unseen in training (or a corpus without users): it
has no bias (``b_0 = 0``) and is never fitted, so such a row is predicted from the other
bias and μ alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BIAS_REG", "BiasModel", "fit_bias_model"]

# λ: the ridge weight of every bias (one value for users and items, as in Koren's eq. 2)
BIAS_REG = 10.0


@dataclass(frozen=True)
class BiasModel:
    """``mu`` + ``user_bias[u]`` + ``item_bias[i]``; index 0 (unseen) has bias 0, and so has
    any index past the fitted ones."""

    mu: float
    user_bias: np.ndarray  # float64 [U + 1], [0] = 0
    item_bias: np.ndarray  # float64 [I + 1], [0] = 0
    iterations: int

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.mu + _lookup(self.user_bias, users) + _lookup(self.item_bias, items)


def _lookup(bias: np.ndarray, idx: np.ndarray) -> np.ndarray:
    idx = np.asarray(idx, np.int64)
    known = (idx > 0) & (idx < len(bias))
    return np.where(known, bias[np.where(known, idx, 0)], 0.0)


def _block_step(idx: np.ndarray, residual: np.ndarray, size: int, reg: float) -> np.ndarray:
    """The biases of one block minimising Σ (residual − b_idx)² + λ Σ b², index 0 left at 0."""
    sums = np.bincount(idx, weights=residual, minlength=size)
    counts = np.bincount(idx, minlength=size)
    bias = sums / (reg + counts)
    bias[0] = 0.0
    return bias


def fit_bias_model(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    *,
    reg: float = BIAS_REG,
    tol: float = 1e-10,
    max_iter: int = 1000,
) -> BiasModel:
    """Fit μ, b_u, b_i on training triples (``users``/``items``: indices, 0 = unseen).

    Iterates until no bias moves by more than ``tol`` (or ``max_iter`` rounds).

    Raises:
        ValueError: no ratings, arrays of different lengths, a negative index, or ``reg``
            ≤ 0 (without it a constant moved from every user to every item bias would not
            change the fit: the optimum is not unique).
    """
    users = np.asarray(users, np.int64).reshape(-1)
    items = np.asarray(items, np.int64).reshape(-1)
    r = np.asarray(ratings, np.float64).reshape(-1)
    if r.size == 0:
        raise ValueError("no training ratings")
    if not users.size == items.size == r.size:
        raise ValueError(f"{users.size} users, {items.size} items, {r.size} ratings")
    if users.min() < 0 or items.min() < 0:
        raise ValueError("user and item indices must be >= 0 (0 = unseen)")
    if reg <= 0:
        raise ValueError(f"reg must be > 0, got {reg}")
    mu = float(r.mean())
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    b_user = np.zeros(n_users)
    b_item = np.zeros(n_items)
    dev = r - mu
    rounds = 0
    while rounds < max_iter:
        rounds += 1
        new_item = _block_step(items, dev - b_user[users], n_items, reg)
        new_user = _block_step(users, dev - new_item[items], n_users, reg)
        moved = max(np.abs(new_item - b_item).max(), np.abs(new_user - b_user).max())
        b_item, b_user = new_item, new_user
        if moved <= tol:
            break
    return BiasModel(mu, b_user, b_item, rounds)
