"""Head and neuron surgery: physically remove attention heads and FFN neurons.

transformers 5 dropped ``prune_heads``/``head_mask``, so the surgery is done here: a removed
head's rows of Q, K, V and its columns of the output projection are sliced away (head size
unchanged, ``num_attention_heads``/``all_head_size`` of the attention module updated); a
removed FFN neuron's row of the up-projection(s) and column of the down-projection go too.

Supported blocks: BERT family (``attention.self.{query,key,value}``, ``attention.output.dense``,
``intermediate.dense``, ``output.dense``) for heads and neurons; Llama (``mlp.{gate,up,down}_proj``)
and GPT-2 (``mlp.c_fc``/``mlp.c_proj``, Conv1D) for neurons.

Reloading (see :func:`load_pruned`): FFN neurons are removed in equal numbers from every
layer, so the width stays uniform and ``config.intermediate_size`` (``n_inner`` for GPT-2) is
simply updated — a model pruned only in its FFNs reloads with plain
``AutoModelForSequenceClassification.from_pretrained``. Head counts may differ per layer
(heads are ranked globally), which no HF config field can express any more; the original head
ids removed per layer are kept in ``config.pruned_heads`` (the key transformers 4 used) and
:func:`load_pruned` rebuilds the full model, removes the same heads, then loads the weights.

Facts about a pruned model live in its config, not in attributes bolted onto its modules, so
they travel with every copy, checkpoint and ``save_pretrained``: ``config.pruned_heads``
(``{"<layer>": [original ids removed]}``) is updated by :func:`remove_heads` as it cuts and
read by :func:`head_ids` (a block's layer is its attention module's ``layer_idx``, which
:func:`engine.models.keep_layers` renumbers together with the config's per-layer keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from engine.models import layer_list

__all__ = [
    "PRUNED_HEADS",
    "BlockParts",
    "block_parts",
    "head_ids",
    "load_pruned",
    "remove_heads",
    "remove_neurons",
    "removed_heads",
    "sync_config",
]

PRUNED_HEADS = "pruned_heads"  # config key: {"<layer>": [original head ids removed]}


@dataclass
class BlockParts:
    """The prunable pieces of one transformer block (None where unsupported)."""

    attn: nn.Module | None  # holds num_attention_heads / attention_head_size
    qkv: tuple[nn.Linear, ...]
    attn_out: nn.Linear | None
    ffn_in: tuple[nn.Module, ...]  # up (and gate) projections: one row/column per neuron
    ffn_out: nn.Module
    conv1d: bool = False  # GPT-2 Conv1D: weight is [in, out]


def block_parts(block: nn.Module) -> BlockParts:
    if hasattr(block, "attention") and hasattr(block, "intermediate"):  # BERT family
        att = block.attention
        s = att.self
        return BlockParts(
            s, (s.query, s.key, s.value), att.output.dense, (block.intermediate.dense,),
            block.output.dense,
        )  # fmt: skip
    mlp = getattr(block, "mlp", None)
    if mlp is not None and hasattr(mlp, "gate_proj"):  # Llama family
        return BlockParts(None, (), None, (mlp.gate_proj, mlp.up_proj), mlp.down_proj)
    if mlp is not None and hasattr(mlp, "c_fc"):  # GPT-2
        return BlockParts(None, (), None, (mlp.c_fc,), mlp.c_proj, conv1d=True)
    raise ValueError(f"cannot prune blocks of type {type(block).__name__}")


def _head_place(block: nn.Module) -> tuple[nn.Module, Any, str]:
    """The attention module of ``block``, the model config it shares, and its layer key."""
    attn = block_parts(block).attn
    if attn is None:
        raise ValueError(f"head pruning is not supported for {type(block).__name__}")
    cfg, layer = getattr(attn, "config", None), getattr(attn, "layer_idx", None)
    if cfg is None or layer is None:
        raise ValueError(f"{type(attn).__name__} does not say its config and layer_idx")
    return attn, cfg, str(layer)


def removed_heads(config: Any) -> dict[str, list[int]]:
    """``config.pruned_heads`` with string layer keys ({} when nothing was removed)."""
    return {str(k): list(v) for k, v in (getattr(config, PRUNED_HEADS, None) or {}).items()}


def head_ids(block: nn.Module) -> list[int]:
    """Original ids of the heads still present in ``block`` (from ``config.pruned_heads``)."""
    attn, cfg, layer = _head_place(block)
    gone = set(removed_heads(cfg).get(layer, ()))
    ids = [h for h in range(cfg.num_attention_heads) if h not in gone]
    if len(ids) != attn.num_attention_heads:
        raise ValueError(
            f"config.pruned_heads says layer {layer} keeps {len(ids)} heads, "
            f"its attention has {attn.num_attention_heads}"
        )
    return ids


def _slice(layer: nn.Module, keep: torch.Tensor, dim: int) -> None:
    """Keep entries ``keep`` along ``dim`` of ``layer.weight`` (and the bias if it runs along
    that output dimension), in place, dtype and device preserved."""
    w = layer.weight
    keep = keep.to(w.device)
    layer.weight = nn.Parameter(w.detach().index_select(dim, keep).clone())
    bias_dim = 0 if isinstance(layer, nn.Linear) else 1  # GPT-2 Conv1D: weight [in, out]
    if layer.bias is not None and dim == bias_dim:
        layer.bias = nn.Parameter(layer.bias.detach().index_select(0, keep).clone())
    if isinstance(layer, nn.Linear):
        layer.out_features, layer.in_features = layer.weight.shape
    elif hasattr(layer, "nf"):  # Conv1D
        layer.nf = layer.weight.shape[1]


def remove_heads(block: nn.Module, heads: list[int]) -> None:
    """Remove the heads at *current* positions ``heads`` from ``block`` (BERT family)."""
    parts = block_parts(block)
    attn = parts.attn
    ids = head_ids(block)
    drop = sorted(set(int(h) for h in heads))
    if not drop:
        return
    if drop[0] < 0 or drop[-1] >= len(ids):
        raise ValueError(f"head positions {drop} out of range for {len(ids)} heads")
    if len(drop) == len(ids):
        raise ValueError("cannot remove every head of a layer")
    d = attn.attention_head_size
    kept_pos = [h for h in range(len(ids)) if h not in drop]
    index = torch.cat([torch.arange(h * d, (h + 1) * d) for h in kept_pos])
    for lin in parts.qkv:
        _slice(lin, index, 0)
    _slice(parts.attn_out, index, 1)
    attn.num_attention_heads = len(kept_pos)
    attn.all_head_size = len(kept_pos) * d
    _, cfg, layer = _head_place(block)
    pruned = removed_heads(cfg)
    pruned[layer] = sorted({*pruned.get(layer, ()), *(ids[h] for h in drop)})
    setattr(cfg, PRUNED_HEADS, pruned)


def ffn_width(block: nn.Module) -> int:
    parts = block_parts(block)
    w = parts.ffn_out.weight
    return int(w.shape[0] if parts.conv1d else w.shape[1])


def remove_neurons(block: nn.Module, neurons: list[int]) -> None:
    """Remove FFN neurons at *current* positions ``neurons`` from ``block``."""
    parts = block_parts(block)
    width = ffn_width(block)
    drop = set(int(n) for n in neurons)
    if not drop:
        return
    if min(drop) < 0 or max(drop) >= width:
        raise ValueError(f"neuron positions out of range for width {width}")
    if len(drop) == width:
        raise ValueError("cannot remove every FFN neuron of a layer")
    keep = torch.tensor([i for i in range(width) if i not in drop], dtype=torch.long)
    for lin in parts.ffn_in:
        _slice(lin, keep, 1 if parts.conv1d else 0)
    _slice(parts.ffn_out, keep, 0 if parts.conv1d else 1)


def sync_config(model: PreTrainedModel) -> None:
    """Write the model's current structure into its config so ``save_pretrained`` round-trips.

    Raises:
        ValueError: FFN widths differ between layers (no config field can express that).
    """
    blocks = list(layer_list(model))
    widths = {ffn_width(b) for b in blocks}
    if len(widths) != 1:
        raise ValueError(f"FFN widths differ between layers: {sorted(widths)}")
    width = widths.pop()
    cfg = model.config
    key = "n_inner" if hasattr(cfg, "n_inner") else "intermediate_size"
    setattr(cfg, key, width)
    pruned: dict[str, list[int]] = {}
    for i, b in enumerate(blocks):
        if block_parts(b).attn is None:
            continue
        total = cfg.num_attention_heads
        gone = sorted(set(range(total)) - set(head_ids(b)))  # checks the config's layer keys
        if gone:
            pruned[str(i)] = gone
    cfg.pruned_heads = pruned


def load_pruned(path: str | Path) -> PreTrainedModel:
    """Reload a model saved by the engine (``save_pretrained`` after pruning), exactly.

    Without pruned heads this is plain ``AutoModelForSequenceClassification.from_pretrained``.
    With them, the full model is built from the config, the recorded heads are removed and
    the saved weights loaded strictly (a missing or misshapen tensor is an error).
    """
    from safetensors.torch import load_file

    path = Path(path)
    cfg = AutoConfig.from_pretrained(path)
    pruned = {int(k): v for k, v in removed_heads(cfg).items()}
    if not pruned:
        return AutoModelForSequenceClassification.from_pretrained(path).eval()
    setattr(cfg, PRUNED_HEADS, {})  # the full model first; remove_heads records them again
    model = AutoModelForSequenceClassification.from_config(cfg)
    blocks = layer_list(model)
    for i, gone in pruned.items():
        remove_heads(blocks[i], gone)  # full model: current positions = original ids
    state = load_file(str(path / "model.safetensors"))
    model.load_state_dict(state, strict=True)
    return model.eval()
