"""Next-item splits as text: the ``text`` family's users are their recent item titles.

:func:`prepare_text_sequences` builds the leave-one-out splits of
:func:`engine.data.sequences.prepare_sequences` (the same users, targets, ``seen`` items,
``negatives`` and ``protocol``) and turns each row's item-id history into text:

* ``input_ids`` / ``attention_mask`` — the titles of the user's ``data.recsys.text_items``
  most recent items, **most recent first**, joined by ``" | "`` and tokenised with the
  encoder's tokenizer to ``data.max_length`` tokens (so truncation drops the oldest titles);
* ``item_vectors`` — ``[V + 1, hidden]``: row i the pretrained encoder's mean-pooled encoding
  of item i's title (:func:`engine.tasks.text_ranker.title_vectors`), row 0 zeros. It is the
  catalogue, not a per-row array: every split of one domain carries the same one;
* ``user_vectors`` (valid and test) — the pretrained encoder's encoding of each user's text,
  from which the ``zero_shot`` reference row ranks items by cosine similarity without any
  training;
* ``item_counts`` (test) — ``[V + 1]``, how often each item is a training target in its own
  domain (the ``popularity`` row of the transfer split, whose training users the model never
  sees).

An item without a title in the corpus's metadata is written ``item <raw id>`` (counted in
``stats["items_without_title"]``). With ``data.transfer`` the other domain is prepared the
same way and its leave-one-out *test* rows (capped by ``data.test_size``), with its own
catalogue, become :attr:`engine.data.PreparedData.transfer`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from engine.data.config import DataConfig
from engine.data.pipeline import PreparedData
from engine.data.registry import DataError
from engine.data.sequences import catalogue_titles, sequence_data

__all__ = ["SEPARATOR", "prepare_text_sequences", "user_texts"]

SEPARATOR = " | "
ROW_ARRAYS = ("labels", "seen", "negatives", "protocol", "row_key")


def user_texts(input_ids: np.ndarray, titles: Sequence[str], n_items: int) -> list[str]:
    """Each row's ``n_items`` most recent item titles (the row's rightmost non-zero ids),
    most recent first, joined by :data:`SEPARATOR`; ``titles[i - 1]`` is item i's."""
    out = []
    for row in np.asarray(input_ids):
        ids = [int(i) for i in row if i != 0][-n_items:]
        out.append(SEPARATOR.join(titles[i - 1] for i in reversed(ids)))
    return out


def _as_text(
    split: Mapping[str, np.ndarray],
    titles: list[str],
    tok,
    cfg: DataConfig,
    vectors: np.ndarray,
    model: str,
    *,
    zero_shot: bool,
) -> dict[str, np.ndarray]:
    from engine.tasks.text_ranker import text_vectors

    texts = user_texts(split["input_ids"], titles, cfg.recsys.text_items)
    enc = tok(texts, padding="max_length", truncation=True, max_length=cfg.max_length)
    out = {
        "input_ids": np.asarray(enc["input_ids"], np.int64),
        "attention_mask": np.asarray(enc["attention_mask"], np.int64),
    }
    out.update({k: split[k] for k in ROW_ARRAYS if k in split})
    out["item_vectors"] = vectors
    if zero_shot:  # the pretrained encoder's user vectors: the zero-shot reference row
        out["user_vectors"] = text_vectors(model, texts, max_length=cfg.max_length)
    return out


def _domain(cfg: DataConfig, model: str, tok) -> tuple[PreparedData, dict]:
    """One domain's splits as text, and its stats."""
    from engine.tasks.text_ranker import title_vectors

    data, raw_titles = sequence_data(cfg)
    titles, missing = catalogue_titles(data.label_names[1:], raw_titles)
    vectors = title_vectors(model, titles, max_length=cfg.recsys.title_tokens)
    splits = {
        s: _as_text(getattr(data, s), titles, tok, cfg, vectors, model, zero_shot=s != "train")
        for s in ("train", "valid", "test")
    }
    # how often each item is a training target here (the transfer split's popularity row)
    counts = np.bincount(np.asarray(data.train["labels"], np.int64), minlength=data.num_labels)
    splits["test"]["item_counts"] = counts
    lengths = splits["train"]["attention_mask"].sum(1)
    stats = {
        **data.stats,
        "items_without_title": missing,
        "user_text_tokens_mean": float(lengths.mean()) if len(lengths) else 0.0,
        "user_text_truncated": float((lengths >= cfg.max_length).mean()) if len(lengths) else 0.0,
    }
    text = PreparedData(
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        num_labels=data.num_labels,
        label_names=data.label_names,
        files=data.files,
        bad_rows=data.bad_rows,
        stats=stats,
    )
    return text, stats


def prepare_text_sequences(cfg: DataConfig, model: str) -> PreparedData:
    """The ``text`` family's splits for ``teacher.model = text:<encoder>`` (module docstring).

    Raises:
        DataError: as :func:`engine.data.sequences.prepare_sequences`, for either domain.
    """
    from transformers import AutoTokenizer

    from engine.models import resolve_model_path
    from engine.tasks.text_ranker import encoder_name

    tok = AutoTokenizer.from_pretrained(resolve_model_path(encoder_name(model)))
    data, _ = _domain(cfg, model, tok)
    if cfg.transfer is None:
        return data
    t = cfg.transfer
    other_cfg = cfg.model_copy(
        update={
            "corpus": t.corpus,
            "path": t.path,
            "columns": t.columns,
            "timestamp_unit": t.timestamp_unit,
            "hf_name": t.hf_name,
            "hf_split": t.hf_split,
            "limit": t.limit,
            "sample_fraction": t.sample_fraction,
            "transfer": None,
        }
    )
    try:
        other, other_stats = _domain(other_cfg, model, tok)
    except DataError as e:
        raise DataError(f"data.transfer: {e}") from None
    data.transfer = other.test
    data.files = [*data.files, *other.files]
    data.bad_rows = [*data.bad_rows, *other.bad_rows]
    data.stats = {
        **data.stats,
        "transfer": {
            "corpus": t.corpus,
            "users": len(other.test["labels"]),
            "items": int(other.num_labels - 1),
            "items_without_title": other_stats["items_without_title"],
            "order": other_stats.get("order"),
        },
        # the other domain's order and sampling warnings too, said of it
        "warnings": [
            *data.stats.get("warnings", []),
            *(f"data.transfer: {w}" for w in other_stats.get("warnings", [])),
        ],
    }
    return data
