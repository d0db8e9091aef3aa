"""Sequence recommenders as Hugging Face models: a causal transformer over item ids.

A ``sequence`` next-item model is GPT-2 or Llama with the token vocabulary replaced by the
item catalogue (id 0 = padding, 1…V = items) and a sequence-classification head of V + 1
outputs: the score of every catalogue item for the user whose (left-padded) history is the
input. It is trained from scratch with full softmax cross-entropy over the catalogue (the
"SASRec+" recipe of Klenitskiy & Vasilev, RecSys 2023). Because the blocks are the stock HF
blocks, importance, truncation, pruning, quantization and saving work unchanged.

:class:`GPT2ItemRanker` and :class:`LlamaItemRanker` differ from the stock
``*ForSequenceClassification`` classes in one thing: they apply the catalogue head to the
pooled position only (the rightmost non-padding item, as the stock classes pool), not to
every position, so a forward — and its fvcore GFLOPs — costs one catalogue scoring per user.
Positions are counted from each row's first item (``position_ids = cumsum(mask) − 1``), so
a history scores the same whatever its batch's padding width, and a prefix seen at training
has the positions it has at evaluation. Given those position ids, their logits and parameter
names equal the stock classes', so a saved model reloads into either. ``forward(..., all_positions=True)`` scores the catalogue after every position
(``[B, L, items]``), which trains a teacher on every prefix of a sequence at once (SASRec).

``teacher.model`` names the architecture: ``scratch:gpt2`` or ``scratch:llama`` (the presets
in :data:`PRESETS`), or a local folder whose ``config.json`` is a GPT-2 or Llama config
(trained from scratch; its vocabulary, head width and padding id are set from the data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2Model,
    LlamaConfig,
    LlamaForSequenceClassification,
    LlamaModel,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutputWithPast

__all__ = [
    "PRESETS",
    "GPT2ItemRanker",
    "LlamaItemRanker",
    "build_item_model",
    "init_from_titles",
    "item_model_from_config",
    "item_model_problem",
]

SCRATCH = "scratch:"

# Presets for ``teacher.model: scratch:<name>``: deep enough that truncation is a real
# question on MovieLens-100K, small enough to train on 2 CPU cores in minutes.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": {
        "model_type": "gpt2",
        "n_embd": 64,
        "n_layer": 6,
        "n_head": 2,
        "n_inner": 256,
        "n_positions": 256,
        "resid_pdrop": 0.2,
        "embd_pdrop": 0.2,
        "attn_pdrop": 0.2,
        "tie_word_embeddings": True,
    },
    "llama": {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 6,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 192,
        "max_position_embeddings": 256,
        "attention_dropout": 0.2,
        "tie_word_embeddings": True,
    },
}


def _pooled(input_ids: torch.Tensor | None, hidden: torch.Tensor, pad: int | None) -> torch.Tensor:
    """The hidden state at each row's rightmost non-padding position (the stock rule)."""
    if input_ids is None or pad is None:
        return hidden[:, -1]
    mask = (input_ids != pad).to(hidden.device, torch.int32)
    idx = torch.arange(input_ids.shape[-1], device=hidden.device, dtype=torch.int32)
    last = (idx * mask).argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted from each row's first item (0, 1, …; padding gets 0): a history
    has the same positions however much left padding its batch adds."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class ItemGPT2Config(GPT2Config):
    """GPT-2 over item ids (its own ``model_type`` so that the Auto classes build
    :class:`GPT2ItemRanker` from a saved config)."""

    model_type = "item-gpt2"


class ItemLlamaConfig(LlamaConfig):
    """Llama over item ids (its own ``model_type``, see :class:`ItemGPT2Config`)."""

    model_type = "item-llama"


class _ItemRanker:
    """The forward both item models share: the HF body (``base_model``: GPT-2's
    ``transformer``, Llama's ``model``), then the catalogue head at the pooled position."""

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        all_positions: bool = False,
        **kwargs: Any,
    ) -> SequenceClassifierOutputWithPast:
        kwargs.pop("labels", None)
        kwargs.setdefault("use_cache", False)
        if attention_mask is not None and "position_ids" not in kwargs:
            kwargs["position_ids"] = _positions(attention_mask)
        out = self.base_model(input_ids, attention_mask=attention_mask, **kwargs)
        if all_positions:  # [B, L, items]: the scores after every prefix (teacher training)
            h = out.last_hidden_state
        else:
            h = _pooled(input_ids, out.last_hidden_state, self.config.pad_token_id)
        return SequenceClassifierOutputWithPast(
            logits=self.score(h), hidden_states=out.hidden_states, attentions=out.attentions
        )


class GPT2ItemRanker(_ItemRanker, GPT2ForSequenceClassification):
    """GPT-2 over item ids; the catalogue head scores the pooled position only."""

    config_class = None  # set below: ItemGPT2Config
    _tied_weights_keys = {"score.weight": "transformer.wte.weight"}  # noqa: RUF012


class LlamaItemRanker(_ItemRanker, LlamaForSequenceClassification):
    """Llama over item ids; the catalogue head scores the pooled position only."""

    config_class = None  # set below: ItemLlamaConfig
    _tied_weights_keys = {"score.weight": "model.embed_tokens.weight"}  # noqa: RUF012


GPT2ItemRanker.config_class = ItemGPT2Config
LlamaItemRanker.config_class = ItemLlamaConfig
CONFIGS: dict[str, type[PretrainedConfig]] = {"gpt2": ItemGPT2Config, "llama": ItemLlamaConfig}
CLASSES: dict[str, type[PreTrainedModel]] = {"gpt2": GPT2ItemRanker, "llama": LlamaItemRanker}


class _ItemGPT2Model(GPT2Model):
    config_class = ItemGPT2Config


class _ItemLlamaModel(LlamaModel):
    config_class = ItemLlamaConfig


for _cfg, _body, _cls in (
    (ItemGPT2Config, _ItemGPT2Model, GPT2ItemRanker),
    (ItemLlamaConfig, _ItemLlamaModel, LlamaItemRanker),
):
    # a saved item model reloads through the Auto classes (engine.tasks imports this module)
    AutoConfig.register(_cfg.model_type, _cfg, exist_ok=True)
    AutoModel.register(_cfg, _body, exist_ok=True)
    AutoModelForSequenceClassification.register(_cfg, _cls, exist_ok=True)


def item_model_problem(name: str) -> str | None:
    """Why ``name`` is not an item-model architecture here, or None."""
    if name.startswith(SCRATCH):
        preset = name[len(SCRATCH) :]
        if preset not in PRESETS:
            return f"unknown preset {preset!r} (known: {', '.join(SCRATCH + p for p in PRESETS)})"
        return None
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        return (
            f"{name!r}: the next_item sequence family needs 'scratch:gpt2', 'scratch:llama' or "
            "a local folder with a GPT-2/Llama config.json"
        )
    model_type = AutoConfig.from_pretrained(path).model_type
    if _family(model_type) is None:
        return f"{name!r} is a {model_type!r} config; item models are {', '.join(CLASSES)}"
    return None


def _family(model_type: str) -> str | None:
    """``gpt2``/``llama`` for a stock or item config of that family, else None."""
    family = model_type.removeprefix("item-")
    return family if family in CONFIGS else None


def _config(name: str, num_items: int) -> PretrainedConfig:
    if name.startswith(SCRATCH):
        preset = dict(PRESETS[name[len(SCRATCH) :]])
        family = preset.pop("model_type")
    else:
        raw = AutoConfig.from_pretrained(Path(name).expanduser()).to_dict()
        family = _family(raw.pop("model_type"))
        preset = {
            k: v for k, v in raw.items() if k not in ("architectures", "transformers_version")
        }
    preset.update(
        vocab_size=num_items,
        num_labels=num_items,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
        problem_type="single_label_classification",
    )
    preset.pop("id2label", None)
    preset.pop("label2id", None)
    return CONFIGS[family](**preset)


def build_item_model(
    name: str, num_items: int, *, attn_implementation: str = "sdpa", seed: int = 0
) -> PreTrainedModel:
    """A freshly initialised item model (``num_items`` = catalogue size + 1 for padding)."""
    problem = item_model_problem(name)
    if problem is not None:
        raise ValueError(problem)
    cfg = _config(name, num_items)
    torch.manual_seed(seed)
    family = _family(cfg.model_type)
    return CLASSES[family]._from_config(cfg, attn_implementation=attn_implementation)


def item_model_from_config(config: dict[str, Any]) -> PreTrainedModel:
    """An item model of the class ``config["model_type"]`` names (weights loaded after)."""
    family = _family(str(config.get("model_type")))
    if family is None:
        raise ValueError(
            f"no item model for {config.get('model_type')!r} (known: {', '.join(CLASSES)})"
        )
    body = {k: v for k, v in config.items() if k != "model_type"}
    return CLASSES[family](CONFIGS[family](**body))


def init_from_titles(model: PreTrainedModel, vectors: Any) -> None:
    """Set the item embeddings (and so the tied catalogue head) from ``vectors`` ``[items,
    D]`` (row 0 padding): column j is the items' coordinate on the j-th principal component of
    the centred vectors, scaled to the standard deviation of the embeddings it replaces. Columns
    beyond the vectors' rank (more columns than items or than D) keep their initialisation, and
    so does padding."""
    import numpy as np

    emb = model.get_input_embeddings().weight
    x = np.asarray(vectors, np.float64)[1:]
    if x.shape[0] != emb.shape[0] - 1:
        raise ValueError(f"{x.shape[0]} title vectors for {emb.shape[0] - 1} items")
    x = x - x.mean(0)
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    k = int(min(emb.shape[1], (sv > sv[0] * 1e-6).sum() if sv.size else 0))
    if k == 0:
        return
    coords = x @ vt[:k].T
    target = float(emb[1:].detach().double().std())
    coords = coords / coords.std(0) * target
    with torch.no_grad():
        emb[1:, :k] = torch.as_tensor(coords, dtype=emb.dtype)
