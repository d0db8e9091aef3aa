"""Save every compressed model in Hugging Face format, and load it back exactly.

``save_compressed(model, out_dir, record=..., extras=...)`` writes ``save_pretrained`` files
plus ``compression.json`` (what the stages did: ``ctx.record``, the pipeline config, how to
reload). ``load_compressed(out_dir)`` returns a model whose outputs equal the saved one's:

* truncated / FFN-pruned / masked models: plain
  ``AutoModelForSequenceClassification.from_pretrained(out_dir)`` (depth and FFN width are
  in ``config.json``; masked zeros are ordinary weights);
* head-pruned models: ``config.pruned_heads`` lists the removed heads per layer, which
  transformers 5 no longer applies itself — :func:`engine.compress.structure.load_pruned`
  does;
* quantized models: quantized modules cannot ``save_pretrained`` (dynamic int8 packs its
  weights; bitsandbytes layers were swapped in by hand), so the *float* model the quantize
  stage started from is saved and ``compression.json`` says ``requantize``; quantization is
  deterministic, so re-running it reproduces the same int8/4-bit weights;
* early-exit models: the backbone as above plus the exit heads' ``exit_heads.pt``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.compress.structure import load_pruned, sync_config

__all__ = ["MANIFEST", "load_compressed", "save_compressed"]

MANIFEST = "compression.json"
EXITS = "exit_heads.pt"


def save_compressed(
    model: nn.Module,
    out_dir: str | Path,
    *,
    record: dict[str, Any],
    extras: dict[str, Any] | None = None,
    pipeline: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (or, when quantized, its float source) and ``compression.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    quant = record.get("quant")
    to_save = (extras or {}).get("float_model") if quant else model
    if to_save is None:
        raise ValueError("a quantized model needs extras['float_model'] to be saved")
    exits = getattr(to_save, "exits", None)  # early exit: backbone + heads saved apart
    if exits is not None:
        to_save = to_save.backbone
        torch.save(exits.state_dict(), out / EXITS)
    if "prune" in record:
        sync_config(to_save)  # a later truncate may have renumbered the layers
    to_save.save_pretrained(out)
    manifest = {
        "record": record,
        "pipeline": pipeline,
        "saved": "float weights; re-quantize on load" if quant else "weights as built",
        "requantize": quant,
        "load_with": "engine.compress.save.load_compressed",
        "plain_from_pretrained": not quant
        and exits is None
        and not getattr(to_save.config, "pruned_heads", None),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return out


def load_compressed(out_dir: str | Path) -> nn.Module:
    """Reload what :func:`save_compressed` wrote (quantized again where it was)."""
    out = Path(out_dir)
    manifest = json.loads((out / MANIFEST).read_text())
    model = load_pruned(out)
    if "early_exit" in manifest["record"]:
        from engine.compress.early_exit import EarlyExitClassifier

        ee = manifest["record"]["early_exit"]
        model = EarlyExitClassifier(model, ee["exit_layers"], ee["threshold"])
        model.exits.load_state_dict(torch.load(out / EXITS, weights_only=True))
        return model.eval()
    if manifest.get("requantize"):
        from engine.compress.quantize import requantize

        return requantize(model, manifest["record"])
    return model
