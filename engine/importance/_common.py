"""Helpers shared by the importance methods: forward calls, layer hooks, seeded randomness.

Layer hooks see a block's hidden-state input and output whatever the architecture: in
transformers 5 a BertLayer returns a tensor, GPT2Block / LlamaDecoderLayer a tensor or a
tuple whose first element is the hidden state.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from engine.importance.base import Batch
from engine.models import layer_list
from engine.tasks import DEFAULT_TASK, Task, get_task

__all__ = [
    "LayerHook",
    "batch_generator",
    "first_tensor",
    "forward_logits",
    "is_causal",
    "layer_hooks",
    "pooled",
    "real_position",
    "replace_first",
    "token_mask",
]

# hook(layer_index, hidden_in, hidden_out) -> replacement hidden_out, or None to keep it
LayerHook = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor | None]


def first_tensor(out: Any) -> torch.Tensor:
    """The hidden state in a block's output (a tensor, or the first element of a tuple)."""
    return out if isinstance(out, torch.Tensor) else out[0]


def replace_first(out: Any, new: torch.Tensor) -> Any:
    """``out`` with its hidden state replaced by ``new``, keeping the container type."""
    if isinstance(out, torch.Tensor):
        return new
    return (new, *tuple(out)[1:])


def _hidden_in(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def layer_hooks(model: nn.Module, hook: LayerHook) -> Iterator[None]:
    """Run ``hook`` on every transformer block while the context is open."""
    handles = []
    for i, block in enumerate(layer_list(model)):

        def fn(_m: nn.Module, args: tuple, kwargs: dict, out: Any, i: int = i) -> Any:
            new = hook(i, _hidden_in(args, kwargs), first_tensor(out))
            return None if new is None else replace_first(out, new)

        handles.append(block.register_forward_hook(fn, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def forward_logits(model: nn.Module, batch: Batch, **kwargs: Any) -> torch.Tensor:
    """Logits ``[B, C]`` of a sequence classifier; the KV cache is off (no generation here)."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        use_cache=False,
        **kwargs,
    )
    return out.logits


def loss_per_example(
    logits: torch.Tensor, batch: Batch, task: str | Task = DEFAULT_TASK
) -> torch.Tensor:
    """``task``'s loss per example in float32 (safe under bf16 autocast), against the
    targets in ``batch`` (cross-entropy for classification)."""
    task = get_task(task)
    return task.loss_per_example(logits.float(), batch[task.view.target])


def token_mask(batch: Batch) -> torch.Tensor:
    """Boolean ``[B, S]``: real (non-padding) tokens."""
    return batch["attention_mask"].bool()


def batch_generator(batch: Batch, seed: int, salt: str = "") -> torch.Generator:
    """A generator seeded from ``seed`` and the batch's token ids.

    Randomness then depends on what a batch contains, not on which actor runs it or in what
    order, so splitting batches across actors cannot change a result.
    """
    ids = batch["input_ids"].detach().to("cpu", torch.int64).contiguous().numpy().tobytes()
    key = zlib.crc32(ids, zlib.crc32(salt.encode(), seed & 0xFFFFFFFF))
    g = torch.Generator(device=batch["input_ids"].device)
    g.manual_seed(key)
    return g


def layer_params(model: nn.Module) -> list[list[nn.Parameter]]:
    """Trainable-or-not parameters of each block, in forward order."""
    return [list(block.parameters()) for block in layer_list(model)]


def is_causal(model: nn.Module) -> bool:
    """Whether ``model`` is a causal decoder (GPT-2, Llama, the item rankers): its attention
    modules declare ``is_causal``. Its head reads the last real position, found from the
    padding id, where an encoder's reads position 0 ([CLS])."""
    return any(getattr(m, "is_causal", False) is True for m in layer_list(model)[0].modules())


def real_position(mask: torch.Tensor, which: str) -> torch.Tensor:
    """Per row of ``mask [B, S]``, the index of the first (``"first"``) or last (``"last"``)
    real token, from the mask, so left- and right-padded rows both work (0 for a row with
    no real token)."""
    idx = torch.arange(mask.shape[1], device=mask.device)
    real = mask.bool()
    if which == "last":
        return torch.where(real, idx, -1).amax(1).clamp(min=0)
    return torch.where(real, idx, mask.shape[1]).amin(1) % mask.shape[1]


def pooled(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool ``[B, S, H]`` to ``[B, H]``: masked mean (``mean``), the first real token
    (``cls``: an encoder's [CLS], position 0 when padding is on the right) or the last real
    token (``last``: where a decoder's head reads). Positions come from ``mask``, never
    assumed: a left-padded row's position 0 is padding."""
    hidden = hidden.float()
    if how in ("cls", "last"):
        pos = real_position(mask, "first" if how == "cls" else "last")
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), pos]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def num_examples(batches: Sequence[Batch]) -> list[int]:
    return [int(b["input_ids"].shape[0]) for b in batches]
