"""Save every compressed model in Hugging Face format, and load it back exactly.

``save_compressed(model, out_dir, records=...)`` writes ``save_pretrained`` files plus
``compression.json`` (what the stages did — their records as JSON —, the pipeline config,
how to reload). ``load_compressed(out_dir)`` returns a model whose outputs equal the saved
one's. Each stage declares how a model it built is saved and reloaded (``save`` / ``load`` /
``manifest`` in :class:`engine.compress.base.Stage`); e.g.

* truncated / FFN-pruned / masked models: plain
  ``AutoModelForSequenceClassification.from_pretrained(out_dir)`` (depth and FFN width are
  in ``config.json``; masked zeros are ordinary weights);
* head-pruned models: ``config.pruned_heads`` lists the removed heads per layer, which
  transformers 5 no longer applies itself — :func:`engine.compress.structure.load_pruned`
  does;
* quantized models: the float model the stage started from is saved and re-quantized on
  load (quantization is deterministic);
* early-exit models: the backbone as above plus the exit heads' weights.

Tensors are written as safetensors (``save_pretrained``'s default; the exit heads too), never
pickled. ``compression.json`` is the mark of a complete directory: a re-save removes it first
and writes it last, atomically, so a save killed half-way leaves a directory
:func:`load_compressed` refuses (no manifest) rather than one it would trust.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from engine.compress.base import STAGES, StageRecord, records_from_json, records_json
from engine.compress.structure import load_pruned
from sweepcore.atomic import write_atomic

__all__ = ["MANIFEST", "load_compressed", "save_compressed"]

MANIFEST = "compression.json"


def save_compressed(
    model: nn.Module,
    out_dir: str | Path,
    *,
    records: dict[str, StageRecord],
    trial: dict[str, Any] | None = None,
    pipeline: dict[str, Any] | None = None,
) -> Path:
    """Write what each stage says to save (last stage first) and ``compression.json``.

    ``records``: stage name → typed record (pipeline order); ``trial``: further record
    entries of the trial (e.g. ``oom``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the old one must not vouch for new weights
    to_save = model
    for name, rec in reversed(list(records.items())):
        to_save = STAGES.get(name).save(to_save, rec, out)
    to_save.save_pretrained(out)
    manifest: dict[str, Any] = {
        "record": {**records_json(records), **(trial or {})},
        "pipeline": pipeline,
        "saved": "weights as built",
        "requantize": None,
    }
    plain = True
    for name, rec in records.items():
        stage = STAGES.get(name)
        plain = plain and stage.plain_reload
        if stage.manifest is not None:
            manifest.update(stage.manifest(rec))
    manifest["load_with"] = "engine.compress.save.load_compressed"
    manifest["plain_from_pretrained"] = plain and not getattr(to_save.config, "pruned_heads", None)
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=2, default=str))  # last
    return out


def load_compressed(out_dir: str | Path) -> nn.Module:
    """Reload what :func:`save_compressed` wrote (each stage rebuilds what it added)."""
    out = Path(out_dir)
    manifest = json.loads((out / MANIFEST).read_text())
    records = records_from_json(manifest["record"])
    order = (manifest.get("pipeline") or {}).get("order") or list(records)
    model = load_pruned(out)
    for name in dict.fromkeys(order):
        if name in records:
            model = STAGES.get(name).load(model, records[name], out)
    return model
