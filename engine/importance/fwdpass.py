"""One clean forward per batch, shared by the forward-only representation methods.

block_influence, attention and mutual_info read the same quantities — each block's input
and output hidden state, and (for attention) the attention probabilities — so the engine
runs one forward per calibration batch and hands it to each requested method's reducer.
Attention probabilities need the eager attention kernel; the model is switched to it only
while a reducer that needs them runs, and switched back afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engine.importance._common import forward_logits, is_causal, layer_hooks, num_examples
from engine.importance.base import (
    SHARED_PASSES,
    Batch,
    LayerScores,
    from_rows,
    register_shared_pass,
)
from engine.importance.config import ImportanceConfig
from engine.tasks import DEFAULT_TASK, Task, get_task

__all__ = [
    "FwdBatch",
    "eager_attention",
    "forward_batch",
    "register_fwd_reducer",
    "run_forward_pass",
]


@dataclass
class FwdBatch:
    """What one clean forward exposes: per-block hidden states in/out, attention
    probabilities ``[B, heads, S, S]`` per block (or None), the token mask and labels;
    whether the model is a causal decoder (its head reads the last real position, not
    position 0) and, when the task embeds its targets (``Task.target_embeddings``),
    their input embeddings ``[B, E]`` (else None)."""

    hidden_in: list[torch.Tensor]
    hidden_out: list[torch.Tensor]
    attentions: list[torch.Tensor] | None
    mask: torch.Tensor
    labels: torch.Tensor
    causal: bool = False
    target_embeddings: torch.Tensor | None = None


Reducer = Callable[[FwdBatch, ImportanceConfig], np.ndarray]
_REDUCERS: dict[str, tuple[Reducer, bool]] = {}


def register_fwd_reducer(
    name: str, *, needs_attentions: bool = False
) -> Callable[[Reducer], Reducer]:
    """Make method ``name`` a consumer of the shared forward pass."""

    def deco(fn: Reducer) -> Reducer:
        SHARED_PASSES["forward"].join(name)
        _REDUCERS[name] = (fn, needs_attentions)
        return fn

    return deco


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Use the eager attention kernel (the one that returns probabilities) inside the block."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if before in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def restore_output_capture(model: nn.Module) -> None:
    """Re-register the model classes' output-capture specs with transformers.

    transformers 5 records attentions through hooks described per class in a process-global
    registry filled in ``PreTrainedModel.__init__``; a model unpickled in a fresh process (a
    Ray actor) never ran ``__init__`` there, so ``output_attentions=True`` silently returns
    None. Re-registering is idempotent.
    """
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # other transformers versions keep no such registry
        return
    for mod in model.modules():
        specs = getattr(mod, "_can_record_outputs", None)
        if specs and not _CAN_RECORD_REGISTRY.get(mod):
            _CAN_RECORD_REGISTRY[mod] = specs


@torch.no_grad()
def forward_batch(
    model: nn.Module, batch: Batch, *, attentions: bool, task: str | Task = DEFAULT_TASK
) -> FwdBatch:
    """One clean forward recording every block's hidden input and output (and the targets'
    input embeddings when ``task``'s targets are input ids)."""
    task = get_task(task)
    target = batch[task.view.target]
    h_in: list[torch.Tensor] = []
    h_out: list[torch.Tensor] = []

    def hook(i: int, x: torch.Tensor, y: torch.Tensor) -> None:
        h_in.append(x.detach())
        h_out.append(y.detach())

    with layer_hooks(model, hook):
        if attentions:
            restore_output_capture(model)
            with eager_attention(model):
                out = model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    use_cache=False,
                    output_attentions=True,
                )
            if out.attentions is None:
                raise RuntimeError(
                    f"{type(model).__name__} returned no attention probabilities "
                    "with output_attentions=True and eager attention"
                )
            attn = [a.detach() for a in out.attentions]
        else:
            forward_logits(model, batch)
            attn = None
    target_emb = task.target_embeddings(model, target)
    if target_emb is not None:
        target_emb = target_emb.detach()
    return FwdBatch(
        h_in,
        h_out,
        attn,
        batch["attention_mask"].bool(),
        target,
        causal=is_causal(model),
        target_embeddings=target_emb,
    )


@register_shared_pass("forward")
def run_forward_pass(
    model: nn.Module, batches: Sequence[Batch], cfg: ImportanceConfig, wanted: frozenset[str]
) -> dict[str, LayerScores]:
    """One forward per batch; every wanted forward method reduces it to a layer vector."""
    unknown = set(wanted) - set(_REDUCERS)
    if unknown:
        raise ValueError(
            f"not forward-pass methods: {sorted(unknown)} (known: {sorted(_REDUCERS)})"
        )
    attentions = any(_REDUCERS[m][1] for m in wanted)
    rows: dict[str, list[np.ndarray]] = {m: [] for m in wanted}
    for batch in batches:
        fb = forward_batch(model, batch, attentions=attentions, task=cfg.task)
        for m in wanted:
            rows[m].append(np.asarray(_REDUCERS[m][0](fb, cfg), dtype=np.float64))
    sizes = num_examples(batches)
    return {m: from_rows(m, rows[m], sizes) for m in sorted(wanted)}
