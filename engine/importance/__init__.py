"""Layer importance methods.

Extension point — one signature for every method::

    @register_importance("fisher")
    def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
        ...

``batches`` are dicts of tensors (``input_ids``, ``attention_mask``, ``labels``) on the
model's device; the result holds one float per layer, higher = more important to keep.
Methods are plain functions with no Ray import; :mod:`engine.importance.runner` adapts them
to Ray actors.

A method's score is a mean over examples: of per-example contributions
(``LayerScores.per_example``, ``[N, L]``) where the method has them (fisher, fisher_mask,
gradient, ablation, block_influence, attention, conductance, mc_dropout), else the
example-weighted mean of per-batch vectors (taylor, mutual_info, activation_patching); the
bootstrap resamples examples or batches accordingly. Results merged from several actors equal
one actor's. Methods that can share work join a shared pass (one backward feeds fisher,
fisher_mask, gradient and taylor; one forward feeds block_influence, attention and
mutual_info); :func:`engine.importance.compute.score_methods` runs each pass once. Each
method's module docstring states its definition and source.
"""

from __future__ import annotations

# importing the method modules registers them
from engine.importance import (  # noqa: F401
    ablation,
    activation_patching,
    attention,
    block_influence,
    conductance,
    consensus,
    fisher,
    gradient,
    hybrid,
    mc_dropout,
    mutual_info,
    taylor,
)
from engine.importance.base import IMPORTANCE, Batch, LayerScores, register_importance

__all__ = ["IMPORTANCE", "Batch", "LayerScores", "register_importance"]
