"""Head and neuron surgery: physically remove attention heads and FFN neurons.

transformers 5 dropped ``prune_heads``/``head_mask``, so the surgery is done here: a removed
head's rows of Q, K, V and its columns of the output projection are sliced away (head size
unchanged, the attention module's head count updated); a removed FFN neuron's row of the
up-projection(s) and column of the down-projection go too.

Supported blocks, heads and neurons alike:

* BERT family — ``attention.self.{query,key,value}``, ``attention.output.dense``,
  ``intermediate.dense``, ``output.dense``;
* GPT-2 — ``attn.c_attn`` (one Conv1D, weight [in, 3·E]: the Q, K, V thirds side by side,
  head h at columns h·d … (h+1)·d − 1 of each third), ``attn.c_proj``, ``mlp.c_fc`` /
  ``mlp.c_proj``; the attention's ``num_heads`` and ``split_size`` (where its forward
  splits the fused projection) are updated;
* Llama layout (Llama, Qwen2, Mistral) — ``self_attn.{q,k,v,o}_proj``,
  ``mlp.{gate,up,down}_proj``. Its forward reads only ``head_dim`` and
  ``num_key_value_groups`` from the module (the head count comes from the projections'
  shapes), so only weights change.

**The unit under grouped-query attention.** With fewer ``num_key_value_heads`` than
``num_attention_heads`` each key/value head serves a group of ``num_key_value_groups``
consecutive query heads. A head is removed with its whole group: the KV head and every query head sharing it
(:func:`head_group`). Group sizes stay uniform, so ``num_key_value_groups`` and the attention
kernels are untouched; removing only some query heads of a group is refused. With ordinary
multi-head attention (every ``scratch:`` preset) the group is one head. Head ids are always
*query*-head ids, so ``config.pruned_heads`` means the same thing in every family.

Reloading (see :func:`load_pruned`): when every layer keeps the same FFN width,
``config.intermediate_size`` (``n_inner`` for GPT-2) is simply updated — a model pruned only
in its FFNs reloads with plain ``AutoModelForSequenceClassification.from_pretrained``. Widths
that differ per layer (neurons ranked across layers) and head counts that differ per layer
(heads ranked globally) are things no HF config field expresses: the widths are kept in
``config.ffn_widths`` (one per layer, ``intermediate_size`` then being the widest), the
original head ids removed per layer in ``config.pruned_heads`` (the key transformers 4 used),
and :func:`load_pruned` rebuilds the full model, cuts it to that shape, then loads the weights.

Facts about a pruned model live in its config, not in attributes bolted onto its modules, so
they travel with every copy, checkpoint and ``save_pretrained``: ``config.pruned_heads``
(``{"<layer>": [original ids removed]}``) is updated by :func:`remove_heads` as it cuts and
read by :func:`head_ids` (a block's layer is its attention module's ``layer_idx``, which
:func:`engine.models.keep_layers` renumbers together with the config's per-layer keys).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from engine.models import layer_list

__all__ = [
    "FFN_LAYER_WIDTHS",
    "PRUNED_HEADS",
    "BlockParts",
    "block_parts",
    "build_shaped",
    "head_group",
    "head_ids",
    "head_size",
    "head_unit_weights",
    "load_pruned",
    "remove_heads",
    "remove_neurons",
    "removed_heads",
    "shape_text",
    "structure_config",
    "sync_config",
]

PRUNED_HEADS = "pruned_heads"  # config key: {"<layer>": [original head ids removed]}
FFN_LAYER_WIDTHS = "ffn_widths"  # config key: FFN width per layer, only when they differ


@dataclass
class BlockParts:
    """The prunable pieces of one transformer block (None where unsupported).

    ``q`` holds the query rows (GPT-2: the fused ``c_attn``, Q, K and V side by side),
    ``kv`` the key and value projections (empty for GPT-2), ``attn_out`` the output
    projection, whose input is the heads' outputs concatenated in head order."""

    attn: nn.Module | None  # the attention module: config, layer_idx, head size
    q: nn.Module | None
    kv: tuple[nn.Module, ...]
    attn_out: nn.Module | None
    ffn_in: tuple[nn.Module, ...]  # up (and gate) projections: one row/column per neuron
    ffn_out: nn.Module
    conv1d: bool = False  # GPT-2 Conv1D: weight is [in, out]

    @property
    def qkv(self) -> tuple[nn.Module, ...]:
        return () if self.q is None else (self.q, *self.kv)


def block_parts(block: nn.Module) -> BlockParts:
    if hasattr(block, "attention") and hasattr(block, "intermediate"):  # BERT family
        att = block.attention
        s = att.self
        return BlockParts(
            s, s.query, (s.key, s.value), att.output.dense, (block.intermediate.dense,),
            block.output.dense,
        )  # fmt: skip
    mlp = getattr(block, "mlp", None)
    if mlp is not None and hasattr(mlp, "gate_proj"):  # Llama family
        a = getattr(block, "self_attn", None)
        if a is None or not all(hasattr(a, f"{x}_proj") for x in "qkvo"):
            return BlockParts(None, None, (), None, (mlp.gate_proj, mlp.up_proj), mlp.down_proj)
        return BlockParts(
            a, a.q_proj, (a.k_proj, a.v_proj), a.o_proj, (mlp.gate_proj, mlp.up_proj),
            mlp.down_proj,
        )  # fmt: skip
    if mlp is not None and hasattr(mlp, "c_fc"):  # GPT-2
        a = getattr(block, "attn", None)
        fused = a is not None and type(getattr(a, "c_attn", None)).__name__ == "Conv1D"
        if not fused or getattr(a, "is_cross_attention", False) or getattr(a, "multi_query", 0):
            return BlockParts(None, None, (), None, (mlp.c_fc,), mlp.c_proj, conv1d=True)
        return BlockParts(a, a.c_attn, (), a.c_proj, (mlp.c_fc,), mlp.c_proj, conv1d=True)
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


def head_size(block: nn.Module) -> int:
    """Width of one attention head (``attention_head_size`` / ``head_dim``)."""
    attn = _head_place(block)[0]
    return int(getattr(attn, "attention_head_size", None) or attn.head_dim)


def _heads_present(parts: BlockParts, d: int) -> int:
    """Query heads in the block now, read from the output projection's input width."""
    w = parts.attn_out.weight  # Linear [out, in]; GPT-2 Conv1D [in, out]
    return int(w.shape[0] if parts.conv1d else w.shape[1]) // d


def head_group(block: nn.Module) -> int:
    """Query heads removed together: the size of a key/value group under grouped-query
    attention (a KV head and the query heads sharing it), 1 otherwise."""
    return int(getattr(_head_place(block)[0], "num_key_value_groups", 1))


def removed_heads(config: Any) -> dict[str, list[int]]:
    """``config.pruned_heads`` with string layer keys ({} when nothing was removed)."""
    return {str(k): list(v) for k, v in (getattr(config, PRUNED_HEADS, None) or {}).items()}


def head_ids(block: nn.Module) -> list[int]:
    """Original ids of the heads still present in ``block`` (from ``config.pruned_heads``)."""
    _, cfg, layer = _head_place(block)
    gone = set(removed_heads(cfg).get(layer, ()))
    ids = [h for h in range(cfg.num_attention_heads) if h not in gone]
    present = _heads_present(block_parts(block), head_size(block))
    if len(ids) != present:
        raise ValueError(
            f"config.pruned_heads says layer {layer} keeps {len(ids)} heads, "
            f"its attention has {present}"
        )
    return ids


def head_unit_weights(
    block: nn.Module, of: Callable[[nn.Module], torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """The weights of each head unit (:func:`head_group` query heads), as float matrices of
    [units, ·] in the order Q, K, V, output projection: row u holds every entry that unit u
    owns (its query rows, its key/value rows, its output-projection columns). Biases are
    left out. ``of(layer)``: a tensor shaped like ``layer.weight`` to partition instead
    (e.g. weight × gradient). Detached copies, the model is not touched."""
    parts = block_parts(block)
    d, g = head_size(block), head_group(block)
    units = _heads_present(parts, d) // g
    get = of or (lambda layer: layer.weight)

    def rows(w: torch.Tensor, dim: int) -> torch.Tensor:
        w = w.detach().float().transpose(0, dim) if dim else w.detach().float()
        return w.reshape(units, -1)

    if parts.conv1d:  # GPT-2: c_attn [in, 3·E] → Q, K, V thirds; c_proj [E, out]
        q, k, v = get(parts.q).detach().float().chunk(3, dim=1)
        return [rows(q, 1), rows(k, 1), rows(v, 1), rows(get(parts.attn_out), 0)]
    return [*(rows(get(lin), 0) for lin in parts.qkv), rows(get(parts.attn_out), 1)]


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


def _span(positions: list[int], d: int, offset: int = 0) -> torch.Tensor:
    """Indices of the ``d``-wide slices at ``positions`` (shifted by ``offset``)."""
    return torch.cat([torch.arange(offset + h * d, offset + (h + 1) * d) for h in positions])


def remove_heads(block: nn.Module, heads: list[int]) -> None:
    """Remove the heads at *current* positions ``heads`` from ``block``.

    Raises:
        ValueError: a position out of range, every head of the layer, or (grouped-query
            attention) part of a key/value group only.
    """
    parts = block_parts(block)
    attn, cfg, layer = _head_place(block)
    ids = head_ids(block)
    drop = sorted(set(int(h) for h in heads))
    if not drop:
        return
    if drop[0] < 0 or drop[-1] >= len(ids):
        raise ValueError(f"head positions {drop} out of range for {len(ids)} heads")
    if len(drop) == len(ids):
        raise ValueError("cannot remove every head of a layer")
    d, g = head_size(block), head_group(block)
    kept_pos = [h for h in range(len(ids)) if h not in drop]
    groups_gone = sorted({h // g for h in drop})
    if g > 1 and len(drop) != g * len(groups_gone):
        raise ValueError(
            f"grouped-query attention removes whole key/value groups of {g} query heads; "
            f"positions {drop} split a group"
        )
    q_index = _span(kept_pos, d)
    if parts.conv1d:  # GPT-2: the fused c_attn keeps the same heads in each of its thirds
        width = len(ids) * d
        _slice(parts.q, torch.cat([_span(kept_pos, d, t * width) for t in range(3)]), 1)
        _slice(parts.attn_out, q_index, 0)
        attn.num_heads = len(kept_pos)
        attn.split_size = len(kept_pos) * d
    else:
        _slice(parts.q, q_index, 0)
        kv_kept = [k for k in range(len(ids) // g) if k not in groups_gone]
        for lin in parts.kv:
            _slice(lin, _span(kv_kept, d), 0)
        _slice(parts.attn_out, q_index, 1)
        if hasattr(attn, "all_head_size"):  # BERT family
            attn.num_attention_heads = len(kept_pos)
            attn.all_head_size = len(kept_pos) * d
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
    """Write the model's current structure into its config so ``save_pretrained`` round-trips:
    the FFN width (the widest, with ``ffn_widths`` per layer when they differ) and the heads
    removed per layer."""
    _write_structure(model.config, list(layer_list(model)))


def _write_structure(cfg: Any, blocks: list[nn.Module]) -> None:
    widths = [ffn_width(b) for b in blocks]
    key = "n_inner" if hasattr(cfg, "n_inner") else "intermediate_size"
    setattr(cfg, key, max(widths))
    setattr(cfg, FFN_LAYER_WIDTHS, widths if len(set(widths)) > 1 else None)
    pruned: dict[str, list[int]] = {}
    for i, b in enumerate(blocks):
        if block_parts(b).attn is None:
            continue
        total = cfg.num_attention_heads
        gone = sorted(set(range(total)) - set(head_ids(b)))  # checks the config's layer keys
        if gone:
            pruned[str(i)] = gone
    cfg.pruned_heads = pruned


def _range_text(values: list[int]) -> str:
    return f"{min(values)}" if len(set(values)) == 1 else f"{min(values)}–{max(values)}"


def shape_text(config: Any, layers: int) -> str:
    """What a model of ``layers`` blocks is, from its config: "6 layers, 12 heads, FFN 1536";
    per-layer heads and FFN widths that differ as a range ("4–9 heads", "FFN 20–36"). The
    parts a config does not say (no attention-head count, say) are left out."""
    parts = [f"{layers} layer{'s' if layers != 1 else ''}"]
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    if heads and layers:
        gone = removed_heads(config)
        kept = [int(heads) - len(gone.get(str(i), ())) for i in range(layers)]
        parts.append(f"{_range_text(kept)} heads")
    widths = getattr(config, FFN_LAYER_WIDTHS, None)
    if not widths:
        width = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
        if width is None and getattr(config, "n_embd", None):
            width = 4 * int(config.n_embd)  # GPT-2's default inner width
        widths = [int(width)] * layers if width and layers else []
    if widths:
        parts.append(f"FFN {_range_text([int(w) for w in widths])}")
    return ", ".join(parts)


def structure_config(model: PreTrainedModel) -> dict[str, Any]:
    """The model's config as a JSON dict with its current structure written in (as
    :func:`sync_config` would, on a copy: the live config is left as it is), for
    :func:`build_shaped`. A model whose blocks cannot be pruned has its config as is."""
    import copy

    cfg = copy.deepcopy(model.config)
    try:
        blocks = list(layer_list(model))
        block_parts(blocks[0])
    except ValueError:  # a layout the pruning code does not know: never pruned
        blocks = []
    if blocks:
        _write_structure(cfg, blocks)
    return json.loads(cfg.to_json_string(use_diff=False))


def build_shaped(
    config: dict[str, Any], build: Callable[[dict[str, Any]], PreTrainedModel]
) -> PreTrainedModel:
    """An unweighted model of the structure ``config`` records (:func:`structure_config`):
    ``build`` makes the full-size model from the config with no heads removed, then each
    recorded head is removed and each layer's FFN cut to its recorded width."""
    pruned = {int(k): list(v) for k, v in (config.get(PRUNED_HEADS) or {}).items()}
    widths = config.get(FFN_LAYER_WIDTHS)
    model = build({**config, PRUNED_HEADS: {}})
    if pruned or widths:
        _shape(model, pruned, widths)
    return model


def _shape(model: PreTrainedModel, pruned: dict[int, list[int]], widths: list[int] | None) -> None:
    blocks = layer_list(model)
    for i, gone in pruned.items():
        remove_heads(blocks[i], gone)  # full model: current positions = original ids
    for block, width in zip(blocks, widths or [], strict=bool(widths)):
        remove_neurons(block, list(range(width, ffn_width(block))))  # weights are loaded next


def load_pruned(path: str | Path) -> PreTrainedModel:
    """Reload a model saved by the engine (``save_pretrained`` after pruning), exactly.

    Without pruned heads or per-layer FFN widths this is plain
    ``AutoModelForSequenceClassification.from_pretrained``. With them, the full model is built
    from the config, the recorded heads are removed, each layer's FFN cut to its recorded
    width, and the saved weights loaded strictly (a missing or misshapen tensor is an error;
    a tied parameter, saved once under its other name, is not missing).
    """
    from safetensors.torch import load_file

    path = Path(path)
    cfg = AutoConfig.from_pretrained(path)
    pruned = {int(k): v for k, v in removed_heads(cfg).items()}
    widths = getattr(cfg, FFN_LAYER_WIDTHS, None)
    if not pruned and not widths:
        return AutoModelForSequenceClassification.from_pretrained(path).eval()
    setattr(cfg, PRUNED_HEADS, {})  # the full model first; remove_heads records them again
    model = AutoModelForSequenceClassification.from_config(cfg)
    _shape(model, pruned, widths)
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # a tied parameter (an item model's catalogue head is its item embedding) is saved once
    params = model.state_dict(keep_vars=True)
    loaded = {id(params[k]) for k in state if k in params}
    untied = [k for k in missing if id(params[k]) not in loaded]
    if untied or unexpected:
        raise ValueError(
            f"{path}: weights do not fit the pruned model (missing {untied}, "
            f"unexpected {list(unexpected)})"
        )
    return model.eval()
