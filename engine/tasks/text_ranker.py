"""The ``text`` next-item family: a language model recommends from item titles.

A user is the text of their most recent item titles (most recent first); an item is its title.
:class:`TextItemRanker` encodes the user's text with a BERT-family encoder (the embedded
all-MiniLM-L6-v2 by default, or any local BERT-family folder), mean-pools the tokens
(sentence-transformers' pooling for MiniLM), projects the pooled vector with a square
``classifier`` layer (initialised to the identity) and scores every catalogue item by cosine
similarity with the item's title vector, times a learned scale:

    s(u, i) = exp(log_scale) · cos(W · pool(encoder(text_u)), v_i)

The title vectors ``v_i`` (``item_vectors``, a buffer of ``[items, hidden]``, row 0 = padding,
all zeros) are the *pretrained* encoder's mean-pooled title encodings, computed once when the
data are prepared (:func:`title_vectors`) — a catalogue is encoded offline, once, as a deployed
two-tower recommender does. What a study compresses is the user-side encoder: its blocks are
the stock ``bert.encoder.layer`` blocks, so importance, truncation, head/FFN pruning,
quantization and saving work unchanged, and fvcore's GFLOPs per scored user are the encoder's
forward plus the projection and one dot product per catalogue item.

Because items are text, a model trained on one catalogue scores another: :meth:`swap_items`
puts another catalogue's title vectors in place (the task does it while scoring a ``transfer``
split). Untrained (identity projection, pretrained encoder) the model is a zero-shot
recommender: the cosine similarity of the user's recent titles to each candidate title.

``teacher.model: text:<encoder>``, e.g. ``text:embedded:all-MiniLM-L6-v2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertModel,
    BertPreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

__all__ = [
    "TEXT",
    "TextItemRanker",
    "TextRankerConfig",
    "build_text_ranker",
    "encoder_name",
    "mean_pool",
    "text_ranker_from_config",
    "text_ranker_problem",
    "text_vectors",
    "title_vectors",
]

TEXT = "text:"


def _encoder(path: str) -> BertModel:
    """The pretrained encoder without its pooler (the load report, which lists the unused
    pooler weights, is silenced)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return BertModel.from_pretrained(path, add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)


INITIAL_SCALE = 20.0  # cosine × 20: the temperature sentence-transformers' ranking loss uses


def encoder_name(name: str) -> str:
    """``text:<encoder>`` → ``<encoder>`` (what :func:`engine.models.resolve_model_path` reads)."""
    return name[len(TEXT) :]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of the token states where ``mask`` is 1 (a row with no token gives zeros)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class TextRankerConfig(BertConfig):
    """A BERT config plus the catalogue's shape (``num_labels`` items incl. padding, each a
    ``hidden_size`` title vector); its own ``model_type`` so the Auto classes rebuild it."""

    model_type = "item-text-bert"


class TextItemRanker(BertPreTrainedModel):
    """User text → scores of every catalogue item (see the module docstring)."""

    config_class = TextRankerConfig

    def __init__(self, config: TextRankerConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.hidden_size)
        self.log_scale = nn.Parameter(torch.tensor(math.log(INITIAL_SCALE)))
        self.register_buffer(
            "item_vectors", torch.zeros(config.num_labels, config.hidden_size), persistent=True
        )
        self.post_init()
        with torch.no_grad():  # the identity: untrained, the model ranks by title similarity
            self.classifier.weight.copy_(torch.eye(config.hidden_size))
            self.classifier.bias.zero_()
            self.log_scale.fill_(math.log(INITIAL_SCALE))

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        kwargs.pop("labels", None)
        if attention_mask is None and input_ids is not None:
            attention_mask = (input_ids != (self.config.pad_token_id or 0)).long()
        out = self.bert(input_ids, attention_mask=attention_mask, **kwargs)
        user = self.classifier(mean_pool(out.last_hidden_state, attention_mask))
        items = self.item_vectors.to(user.dtype)
        logits = self.log_scale.exp().to(user.dtype) * (
            F.normalize(user, dim=-1) @ F.normalize(items, dim=-1).T
        )
        return SequenceClassifierOutput(
            logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )

    def set_items(self, vectors: np.ndarray | torch.Tensor) -> None:
        """Make ``vectors`` (``[items, hidden]``, row 0 padding) the catalogue."""
        v = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)
        if v.ndim != 2 or v.shape[1] != self.config.hidden_size:
            raise ValueError(
                f"item vectors must be [items, {self.config.hidden_size}], got {tuple(v.shape)}"
            )
        self.item_vectors = v.to(self.item_vectors.device)

    @contextmanager
    def swap_items(self, vectors: np.ndarray | torch.Tensor) -> Iterator[None]:
        """Score another catalogue for the duration (the model's own is put back after)."""
        own = self.item_vectors
        self.set_items(vectors)
        try:
            yield
        finally:
            self.item_vectors = own


AutoConfig.register(TextRankerConfig.model_type, TextRankerConfig, exist_ok=True)
AutoModelForSequenceClassification.register(TextRankerConfig, TextItemRanker, exist_ok=True)


def text_ranker_problem(name: str) -> str | None:
    """Why ``text:<encoder>`` cannot be built here, or None."""
    from engine.models import model_source_problem

    if not name.startswith(TEXT):
        return f"{name!r}: the text family's models are named 'text:<encoder>'"
    problem = model_source_problem(encoder_name(name))
    if problem is not None:
        return problem
    from engine.models import resolve_model_path

    try:
        model_type = AutoConfig.from_pretrained(resolve_model_path(encoder_name(name))).model_type
    except (OSError, ValueError) as e:
        return f"{name!r}: no Hugging Face encoder config there ({str(e).splitlines()[0]})"
    if model_type != "bert":
        return f"{name!r} is a {model_type!r} encoder; the text family needs a BERT-family one"
    return None


def build_text_ranker(
    name: str, num_items: int, *, attn_implementation: str = "sdpa", seed: int = 0
) -> TextItemRanker:
    """The pretrained encoder ``text:<encoder>`` under a fresh catalogue head of ``num_items``
    (catalogue + padding) zero item vectors (set them with :meth:`TextItemRanker.set_items`)."""
    from engine.models import resolve_model_path

    problem = text_ranker_problem(name)
    if problem is not None:
        raise ValueError(problem)
    path = resolve_model_path(encoder_name(name))
    raw = AutoConfig.from_pretrained(path).to_dict()
    body = {k: v for k, v in raw.items() if k not in ("model_type", "architectures")}
    body.update(num_labels=num_items, problem_type="single_label_classification")
    body.pop("id2label", None)
    body.pop("label2id", None)
    torch.manual_seed(seed)
    cfg = TextRankerConfig(**body)
    model = TextItemRanker._from_config(cfg, attn_implementation=attn_implementation)
    encoder = _encoder(path)
    missing, unexpected = model.bert.load_state_dict(encoder.state_dict(), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: encoder weights do not fit ({missing[:3]}, {unexpected[:3]})")
    return model


def text_ranker_from_config(config: dict[str, Any]) -> TextItemRanker:
    """An untrained :class:`TextItemRanker` of this config (weights loaded after)."""
    body = {k: v for k, v in config.items() if k != "model_type"}
    return TextItemRanker(TextRankerConfig(**body))


def text_vectors(
    name: str, texts: Sequence[str], *, max_length: int, batch_size: int = 128
) -> np.ndarray:
    """``[len(texts), hidden]`` float32: the pretrained encoder ``text:<encoder>``'s
    mean-pooled encoding of each text (truncated to ``max_length`` tokens)."""
    from transformers import AutoTokenizer

    from engine.models import resolve_model_path

    path = resolve_model_path(encoder_name(name))
    tok = AutoTokenizer.from_pretrained(path)
    enc = _encoder(path).eval()
    out = [np.zeros((0, enc.config.hidden_size), np.float32)]
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            b = tok(
                list(texts[s : s + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            h = enc(**b).last_hidden_state
            out.append(mean_pool(h, b["attention_mask"]).float().numpy())
    return np.concatenate(out).astype(np.float32)


def title_vectors(name: str, titles: Sequence[str], *, max_length: int = 32) -> np.ndarray:
    """``[len(titles) + 1, hidden]`` float32: row 0 zeros (padding), row i the pretrained
    encoder's encoding of ``titles[i - 1]`` (:func:`text_vectors`)."""
    vectors = text_vectors(name, titles, max_length=max_length)
    return np.concatenate([np.zeros((1, vectors.shape[1]), np.float32), vectors])
