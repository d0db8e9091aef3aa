"""Layer importance methods.

Extension point — one signature for every method::

    @register_importance("fisher")
    def score(model: nn.Module, batches: Sequence[Batch], *, cfg: ImportanceConfig) -> LayerScores:
        ...

``batches`` are dicts of tensors (``input_ids``, ``attention_mask``, ``labels``) on the
model's device; the result holds one float per layer, higher = more important to keep.
Methods are plain functions with no Ray import; :mod:`engine.importance.runner` adapts them
to Ray actors.
"""

from __future__ import annotations

from engine.importance.base import IMPORTANCE, Batch, LayerScores, register_importance

__all__ = ["IMPORTANCE", "Batch", "LayerScores", "register_importance"]
