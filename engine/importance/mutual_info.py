"""Mutual information between a layer's pooled representation and the target.

Definition. The block output is pooled per example (``cfg.mi_pooling``: masked mean over the
real tokens, the first real token (``cls``), the last real token (``last``), or ``head``:
the position the model's head reads — the last real token for a causal decoder, the first
for an encoder; positions always come from the attention mask, so a left-padded decoder's
padding is never read) and mapped by a fixed random Gaussian projection (seeded by
``cfg.seed``, the same for every batch and actor) to ``d = cfg.mi_projection_dims``
dimensions, because both estimators degrade quickly with dimension: ``z_i ∈ R^d``. For each
batch b the score is an estimate of ``I(Z; Y)`` in nats from that batch's (z_i, y_i).

What Y is depends on the task. Class labels and values (classification, rating regression):
Y is the label, by:

- ``knn`` (default): Ross 2014, "Mutual Information between Discrete and Continuous Data
  Sets" (PLoS ONE 9(2): e87357; the estimator behind scikit-learn's
  ``mutual_info_classif``), with Chebyshev distances and ``k = cfg.mi_neighbors``::

      Î_b = ψ(N) + ⟨ψ(k_i)⟩ − ⟨ψ(N_{y_i})⟩ − ⟨ψ(m_i)⟩

  where k_i = min(k, N_{y_i} − 1), d_i is the distance to the k_i-th nearest example with the
  same label and m_i counts all examples strictly closer than d_i (itself included). Examples
  whose label occurs once in the batch are left out. Clipped at 0.
- ``binned``: the plug-in MI ``Σ_{x,y} p̂(x, y) log(p̂(x, y) / p̂(x)p̂(y))`` of ``cfg.mi_bins``
  equal-frequency bins of each projected dimension and the label, averaged over the
  dimensions (a per-dimension quantity, not the joint MI). The plug-in is biased upwards by
  about ``(bins − 1)(classes − 1) / 2N`` nats (Miller 1955; Paninski 2003).

Targets the model embeds (``Task.target_embeddings``: next-item ranking, where the
label is one of hundreds of catalogue items and nearly every item occurs once in a batch, so
a label MI estimated per batch would drop nearly every example and read 0): Y is the
target's vector ``e_i`` (the item's input embedding, which a tied model's head also
scores against; a text recommender's title vector), mapped by the same projection as the states (both live in the hidden
space; a projection of its own when the widths differ): ``w_i ∈ R^d``, and the score is
``I(Z; W)`` — how much the layer's state tells about which item comes next — by:

- ``knn``: Kraskov, Stögbauer & Grassberger 2004 ("Estimating mutual information", Phys.
  Rev. E 69: 066138, estimator 1; the estimator behind scikit-learn's
  ``mutual_info_regression``), Chebyshev distances, ``k = cfg.mi_neighbors``::

      Î_b = ψ(k) + ψ(N) − ⟨ψ(n_z,i + 1) + ψ(n_w,i + 1)⟩

  where ε_i is the distance from i to its k-th nearest neighbour in the joint space (the
  larger of the two distances) and n_z,i (n_w,i) counts the other examples strictly closer
  than ε_i in z (w) alone. Clipped at 0. Exact duplicates of a (z, w) pair have ε = 0 and
  count nothing. Equal to scikit-learn's on one dimension; nearly unbiased there at N = 256,
  but at the defaults (N = 32, d = 8) far below a large MI (measured 1.05 for I = 6.6 on a
  Gaussian pair): it orders layers, it does not measure them
  (tests/engine/importance/test_reference.py).
- ``binned``: the plug-in MI of ``cfg.mi_bins`` equal-frequency bins of ``z_j`` and of
  ``w_j`` (the same projected direction), averaged over the dimensions j.

The layer score is the example-weighted mean of the per-batch estimates. Both estimators are
biased at batch sizes (tests/engine/importance/test_reference.py states the bias measured on a
planted two-class Gaussian mixture), so values depend on the batch size: compare layers,
not absolute numbers. Using this MI as a layer keep-score is the engine's heuristic; the
estimators are the cited ones.

Per-example contributions: none — the score is defined on a whole batch. Each of Ross's
per-example terms depends on the example's neighbours in its batch, the estimate is clipped
at 0, and a bootstrap resample with repeated examples creates zero distances that break a
k-NN estimator; so the confidence interval resamples batches. Not a monotone transform of
another method. Computed from the engine's shared forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.special import digamma
from torch import nn

from engine.importance._common import pooled
from engine.importance.base import Batch, LayerScores, register_importance
from engine.importance.config import ImportanceConfig
from engine.importance.fwdpass import FwdBatch, register_fwd_reducer, run_forward_pass

__all__ = ["binned_mi", "knn_mi", "ksg_mi", "score"]


def knn_mi(z: np.ndarray, y: np.ndarray, k: int = 3) -> float:
    """Ross (2014) k-NN estimate of I(Z; Y) in nats for continuous ``z [N, d]``, labels ``y``."""
    labels, counts = np.unique(y, return_counts=True)
    keep = np.isin(y, labels[counts > 1])
    z, y = z[keep], y[keep]
    n = len(y)
    if n < 2:
        return 0.0
    dist = np.abs(z[:, None, :] - z[None, :, :]).max(-1)  # Chebyshev, [n, n]
    np.fill_diagonal(dist, np.inf)
    k_i = np.empty(n)
    n_y = np.empty(n)
    m_i = np.empty(n)
    for i in range(n):
        same = np.flatnonzero(y == y[i])
        kk = min(k, len(same) - 1)
        radius = np.sort(dist[i, same])[kk - 1]
        k_i[i], n_y[i] = kk, len(same)
        m_i[i] = np.count_nonzero(dist[i] < radius) + 1  # +1: the example itself
    mi = digamma(n) + digamma(k_i).mean() - digamma(n_y).mean() - digamma(m_i).mean()
    return max(float(mi), 0.0)


def _chebyshev(x: np.ndarray) -> np.ndarray:
    return np.abs(x[:, None, :] - x[None, :, :]).max(-1)


def ksg_mi(z: np.ndarray, w: np.ndarray, k: int = 3) -> float:
    """Kraskov et al. (2004, estimator 1) k-NN estimate of I(Z; W) in nats for continuous
    ``z [N, dz]`` and ``w [N, dw]`` (Chebyshev distances), clipped at 0."""
    n = len(z)
    if n < 2:
        return 0.0
    k = min(k, n - 1)
    dz, dw = _chebyshev(z), _chebyshev(w)
    joint = np.maximum(dz, dw)
    np.fill_diagonal(joint, np.inf)
    eps = np.sort(joint, axis=1)[:, k - 1]
    np.fill_diagonal(dz, np.inf)  # the example itself is not counted
    np.fill_diagonal(dw, np.inf)
    n_z = (dz < eps[:, None]).sum(1)
    n_w = (dw < eps[:, None]).sum(1)
    mi = digamma(k) + digamma(n) - (digamma(n_z + 1) + digamma(n_w + 1)).mean()
    return max(float(mi), 0.0)


def _equal_frequency_bins(col: np.ndarray, bins: int) -> np.ndarray:
    edges = np.quantile(col, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, col, side="right")


def binned_mi(z: np.ndarray, y: np.ndarray, bins: int = 4) -> float:
    """Plug-in MI in nats between each column of ``z`` (equal-frequency bins) and ``y``,
    averaged over columns. ``y`` is a label vector ``[N]``, or ``[N, d]`` continuous columns
    (binned the same way) paired column by column with ``z``."""
    total = 0.0
    for j, col in enumerate(z.T):
        x_idx = _equal_frequency_bins(col, bins)
        if y.ndim == 1:
            _, y_idx = np.unique(y, return_inverse=True)
        else:
            y_idx = _equal_frequency_bins(y[:, j], bins)
        joint = np.zeros((bins, y_idx.max() + 1))
        np.add.at(joint, (x_idx, y_idx), 1.0)
        joint /= joint.sum()
        px = joint.sum(1, keepdims=True)
        py = joint.sum(0, keepdims=True)
        nz = joint > 0
        total += float((joint[nz] * np.log(joint[nz] / (px @ py)[nz])).sum())
    return total / z.shape[1]


def _projection(hidden: int, dims: int, seed: int) -> torch.Tensor | None:
    if dims >= hidden:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randn(hidden, dims, generator=g, dtype=torch.float64) / dims**0.5


def _project(x: torch.Tensor, dims: int, seed: int) -> np.ndarray:
    proj = _projection(x.shape[-1], dims, seed)
    x = x.double().cpu()
    return (x if proj is None else x @ proj).numpy()


@register_fwd_reducer("mutual_info")
def mutual_info_per_batch(fb: FwdBatch, cfg: ImportanceConfig) -> np.ndarray:
    how = cfg.mi_pooling
    if how == "head":
        how = "last" if fb.causal else "cls"
    if fb.target_embeddings is not None:  # targets are items: Y = the target's embedding
        y = _project(fb.target_embeddings, cfg.mi_projection_dims, cfg.seed)
        knn = ksg_mi
    else:
        y = fb.labels.cpu().numpy()
        knn = knn_mi
    out = []
    for h in fb.hidden_out:
        z = _project(pooled(h, fb.mask, how), cfg.mi_projection_dims, cfg.seed)
        if cfg.mi_estimator == "knn":
            out.append(knn(z, y, cfg.mi_neighbors))
        else:
            out.append(binned_mi(z, y, cfg.mi_bins))
    return np.array(out)


@register_importance("mutual_info")
def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
    """Estimated I(pooled layer output; target) per layer (higher = more informative)."""
    return run_forward_pass(model, batches, cfg, frozenset({"mutual_info"}))["mutual_info"]
