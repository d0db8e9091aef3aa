"""``next_item``: rank the whole catalogue for a user; the held-out next item should be on top.

* data view: ``input_ids`` = the user's most recent item ids (left-padded with 0),
  ``attention_mask``, ``labels`` = the next item's id (1…V); valid and test rows also carry
  ``seen`` (every earlier item of the user) and, for ``sampled-N``, ``negatives``
  (:func:`engine.data.sequences.prepare_sequences`, leave-one-out);
* model, two families, chosen by ``teacher.model``:
  - ``sequence`` (``scratch:gpt2``, ``scratch:llama`` or a GPT-2/Llama config folder): GPT-2
    or Llama over item ids trained from scratch, a head of V + 1 catalogue scores
    (:mod:`engine.tasks.item_models`);
  - ``text`` (``text:<encoder>``, e.g. ``text:embedded:all-MiniLM-L6-v2``): a pretrained
    BERT-family encoder reads the user's recent item titles and scores each catalogue item by
    cosine similarity with its title vector (:mod:`engine.tasks.text_ranker`; data
    :mod:`engine.data.text_sequences`). Items are text, so ``data.transfer`` scores another
    domain's users against its own catalogue as ``transfer_*`` columns;
* task loss: full softmax cross-entropy over the catalogue; a ``sequence`` teacher (trained
  from scratch) learns from every position of each training sequence at once (position t
  predicts the item at t + 1, the SASRec objective), the students and a ``text`` teacher
  from the pooled user;
* distillation (listwise): ``T² · KL(softmax(s_t / T) ‖ softmax(s_s / T))`` over the
  teacher's scores of every catalogue item, the same ``temperature`` / ``alpha_*`` knobs as
  classification;
* metrics (:mod:`engine.tasks.ranking`): ``hr_at_k``, ``ndcg_at_k`` for k = 5, 10, 20 and
  ``mrr``, all max; the ``ranking`` column says the protocol: ``full`` (every catalogue
  item except the user's earlier ones is a candidate — the default) or ``sampled-N``;
  ties are pessimistic (a candidate scored equal to the target ranks ahead of it);
* per-example table: ``rankings/<trial_id>.parquet`` — user, target, the target's 0-based
  rank and the number of candidates, from which every metric is recomputed;
* baseline ``popularity``: every user gets the items ranked by how often they are a
  training target (ties: the smaller item id, i.e. the more frequent item overall); baseline
  ``zero_shot`` (text family): the untrained pretrained encoder, items ranked by the cosine
  of the user's text and each title;
* objectives: ``valid_ndcg_at_10`` (max) and ``gflops`` (min); report quality: NDCG@10.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from engine.tasks.base import DataView, Task, TeacherTraining, register_task, softmax_distillation
from engine.tasks.item_models import (
    build_item_model,
    init_from_titles,
    item_model_from_config,
    item_model_problem,
)
from engine.tasks.ranking import RANKING_KS, ranking_metrics, sampled_ranks, target_ranks
from engine.tasks.text_ranker import (
    TEXT,
    TextRankerConfig,
    build_text_ranker,
    text_ranker_from_config,
    text_ranker_problem,
)

__all__ = ["NextItem", "cosine_scores", "popularity_scores", "ranks_of"]


def ranks_of(
    outputs: np.ndarray, split: Mapping[str, np.ndarray], protocol: str = "full"
) -> tuple[np.ndarray, np.ndarray, str]:
    """``(ranks, candidate counts, label)`` of each row's target: ``protocol="sampled"``
    ranks among the split's ``negatives`` (label ``sampled-N``), ``"full"`` among every item
    but padding and the split's ``seen`` items (label ``full``)."""
    scores = torch.as_tensor(np.require(outputs, np.float32, ["W"]))
    targets = torch.as_tensor(np.asarray(split["labels"], np.int64))
    if protocol == "sampled":
        if "negatives" not in split:
            raise ValueError("the sampled protocol needs the split's negatives")
        neg = torch.as_tensor(np.asarray(split["negatives"], np.int64))
        ranks, counts = sampled_ranks(scores, targets, neg)
        return ranks, counts, f"sampled-{neg.shape[1]}"
    seen = split.get("seen")
    seen_t = None if seen is None else torch.as_tensor(np.asarray(seen, np.int64))
    ranks, counts = target_ranks(scores, targets, seen_t, padding_id=0)
    return ranks, counts, "full"


def popularity_scores(train_targets: np.ndarray, num_outputs: int) -> np.ndarray:
    """A score per item id: V for the most frequent training target, V − 1 for the next, …
    (equal counts: smaller id first); id 0 (padding) scores lowest. Exact in float32."""
    counts = np.bincount(np.asarray(train_targets, np.int64), minlength=num_outputs)
    counts[0] = -1
    order = np.lexsort((np.arange(num_outputs), -counts))  # most frequent first
    scores = np.empty(num_outputs, np.float32)
    scores[order] = np.arange(num_outputs, 0, -1, dtype=np.float32)
    return scores


def _protocol(split: Mapping[str, np.ndarray]) -> str:
    """The split's ranking protocol: its ``protocol`` entry (``sampled``/``full``) if any."""
    p = split.get("protocol")
    return "full" if p is None else str(np.asarray(p).reshape(-1)[0])


def _every_position_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the catalogue, mean over the positions with a target."""
    return F.cross_entropy(
        outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1), ignore_index=-100
    )


@register_task("next_item")
class NextItem(Task):
    view = DataView(("input_ids", "attention_mask", "labels"), "labels", np.int64)
    metrics = MappingProxyType(
        {
            **{f"hr_at_{k}": "max" for k in RANKING_KS},
            **{f"ndcg_at_{k}": "max" for k in RANKING_KS},
            "mrr": "max",
        }
    )
    default_objectives = (("valid_ndcg_at_10", "max"), ("gflops", "min"))
    default_quality_metric = "ndcg_at_10"
    # trained from scratch: its embeddings train, and it stops on validation NDCG@10 with the
    # best weights kept (engine.early_stopping; teacher.epochs is then the budget)
    teacher_defaults = MappingProxyType(
        {"model": "scratch:gpt2", "freeze_embeddings": False, "early_stopping": {}}
    )
    examples_dir = "rankings"

    # ------------------------------------------------------------------ data and model
    def prepare(self, data: Any, model: str) -> Any:
        if model.startswith(TEXT):
            from engine.data.text_sequences import prepare_text_sequences

            return prepare_text_sequences(data, model)
        from engine.data.sequences import prepare_sequences

        return prepare_sequences(data)

    def study_problems(self, study: Any) -> list[str]:
        problems = []
        text = study.teacher.model.startswith(TEXT)
        check = text_ranker_problem if text else item_model_problem
        if (problem := check(study.teacher.model)) is not None:
            problems.append(f"teacher.model: {problem}")
        if study.data.transfer is not None and not text:
            problems.append(
                "data.transfer: another domain can be scored by the text family only "
                "(teacher.model: text:<encoder>); item ids are not shared between catalogues"
            )
        if text and study.data.recsys.item_init != "random":
            problems.append(
                "data.recsys.item_init: titles starts a sequence model's item embeddings; the "
                "text family reads the titles themselves"
            )
        if study.data.eval is not None:
            problems.append(
                "data.eval: a second corpus as the test split is not supported by next_item "
                "(item ids are not shared between catalogues)"
            )
        return problems

    def build_model(
        self, name: str, num_outputs: int, *, attn_implementation: str = "sdpa", seed: int = 0
    ) -> PreTrainedModel:
        build = build_text_ranker if name.startswith(TEXT) else build_item_model
        return build(name, num_outputs, attn_implementation=attn_implementation, seed=seed).train()

    def model_from_config(self, config: dict[str, Any]) -> PreTrainedModel:
        if config.get("model_type") == TextRankerConfig.model_type:
            return text_ranker_from_config(config)
        return item_model_from_config(config)

    def init_head(self, model: PreTrainedModel, train: Mapping[str, np.ndarray]) -> None:
        """A text recommender's catalogue: the train split's ``item_vectors``; a sequence
        model's item embeddings from ``title_vectors`` (``data.recsys.item_init: titles``)."""
        if hasattr(model, "set_items") and "item_vectors" in train:
            model.set_items(train["item_vectors"])
        elif "title_vectors" in train:
            init_from_titles(model, train["title_vectors"])

    def teacher_inputs(self, train: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: train[k] for k in ("item_vectors", "title_vectors") if k in train}

    def bind_split(self, model: PreTrainedModel, split: Mapping[str, np.ndarray]) -> Any:
        """A text recommender scores the split's own catalogue (another domain's, for the
        ``transfer`` split); a sequence model has only its own."""
        if hasattr(model, "swap_items") and "item_vectors" in split:
            return model.swap_items(split["item_vectors"])
        return super().bind_split(model, split)

    def target_embeddings(
        self, model: PreTrainedModel, targets: torch.Tensor
    ) -> torch.Tensor | None:
        """The target item's title vector (text family) or input embedding (sequence)."""
        vectors = getattr(model, "item_vectors", None)
        if vectors is not None:
            return vectors[targets.long()]
        return model.get_input_embeddings()(targets.long())

    teacher_recipe = "all-positions-v2"  # v2: positions counted from the first item

    def teacher_training(self, train: Mapping[str, np.ndarray]) -> TeacherTraining:
        """The teacher learns the next item after *every* prefix of each training sequence
        at once (the causal SASRec objective): position t of the input predicts the item at
        t + 1, the last position the example's label; padding positions are ignored. A text
        recommender (its train split carries ``item_vectors``) reads the whole user text at
        once, so it learns the example's label (the task loss)."""
        if "item_vectors" in train:
            return super().teacher_training(train)
        ids = np.asarray(train["input_ids"], np.int64)
        targets = np.full(ids.shape, -100, np.int64)
        targets[:, :-1] = np.where((ids[:, :-1] != 0) & (ids[:, 1:] != 0), ids[:, 1:], -100)
        targets[:, -1] = np.asarray(train["labels"], np.int64)
        arrays = {"input_ids": ids, "attention_mask": train["attention_mask"], "labels": targets}
        return TeacherTraining(arrays, _every_position_loss, {"all_positions": True})

    # ------------------------------------------------------------------ losses
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)

    def loss_per_example(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, reduction="none")

    def distill_loss(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        *,
        temperature: float,
        weight: float = 1.0,
    ) -> torch.Tensor:
        return softmax_distillation(student, teacher, temperature=temperature, weight=weight)

    # ------------------------------------------------------------------ importance hooks
    def example_quality(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Reciprocal rank of the target among all items but padding (pessimistic ties)."""
        scores = outputs.detach().double()
        target = scores.gather(1, targets.long().unsqueeze(1))
        ahead = (scores >= target).sum(dim=1) - 1  # the target does not outrank itself
        if scores.shape[1] > 1:  # the padding id 0 is never a candidate
            ahead = ahead - ((scores[:, 0] >= target[:, 0]) & (targets != 0)).long()
        return 1.0 / (ahead.double() + 1.0)

    def attribution_target(self, targets: torch.Tensor) -> torch.Tensor | int:
        return targets  # the target item's score

    # ------------------------------------------------------------------ scoring
    def score(self, outputs: np.ndarray, split: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """The metrics under the split's protocol (``protocol`` array: ``sampled`` or, by
        default, ``full``); with a full ranking and ``negatives`` in the split, the sampled
        figures too, as ``sampled_*`` (labelled by ``sampled_ranking``)."""
        protocol = _protocol(split)
        ranks, _, label = ranks_of(outputs, split, protocol)
        out: dict[str, Any] = {**ranking_metrics(ranks, RANKING_KS), "ranking": label}
        if protocol == "full" and "negatives" in split:
            side, _, side_label = ranks_of(outputs, split, "sampled")
            out.update({f"sampled_{k}": v for k, v in ranking_metrics(side, RANKING_KS).items()})
            out["sampled_ranking"] = side_label
        return out

    def example_table(self, outputs: np.ndarray, split: Mapping[str, np.ndarray]) -> pa.Table:
        ranks, counts, protocol = ranks_of(outputs, split, _protocol(split))
        n = len(ranks)
        users = split.get("row_key", np.arange(n).astype(str))
        return pa.table(
            {
                "user_id": pa.array(np.asarray(users).astype(str)),
                "target_item": pa.array(np.asarray(split["labels"], np.int64)),
                "rank": pa.array(ranks),
                "candidates": pa.array(counts),
                "ranking": pa.array([protocol] * n, pa.string()),
            }
        )

    def baselines(
        self, splits: Mapping[str, Mapping[str, np.ndarray]], num_outputs: int
    ) -> dict[str, dict[str, Any]]:
        """``popularity`` on every scored split (a split with ``item_counts``, another
        domain's, ranks by its own domain's training counts); ``zero_shot`` where the split
        carries the pretrained encoder's ``user_vectors`` and ``item_vectors`` (text family):
        items ranked by the cosine of the user's text and each title, nothing trained."""
        rows: dict[str, dict[str, Any]] = {"popularity": {}}
        train_targets = np.asarray(splits["train"]["labels"], np.int64)
        for name, prefix in (("valid", "valid_"), ("test", ""), ("transfer", "transfer_")):
            split = splits.get(name)
            if split is None or len(split["labels"]) == 0:
                continue
            n = len(split["labels"])
            if name == "transfer" and "item_counts" in split:
                counts = np.asarray(split["item_counts"], np.int64)
                targets = np.repeat(np.arange(len(counts)), counts)
                pop = popularity_scores(targets, len(counts))
            else:
                pop = popularity_scores(train_targets, num_outputs)
            outputs = np.broadcast_to(pop, (n, len(pop)))
            rows["popularity"].update(_prefixed(self.score(outputs, split), prefix))
            if "user_vectors" in split and "item_vectors" in split:
                outputs = cosine_scores(split["user_vectors"], split["item_vectors"])
                rows.setdefault("zero_shot", {}).update(
                    _prefixed(self.score(outputs, split), prefix)
                )
        return rows


def _prefixed(metrics: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def cosine_scores(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """``[users, items]`` cosine similarities (a zero vector scores 0 against everything)."""
    u = torch.as_tensor(np.asarray(users, np.float32))
    v = torch.as_tensor(np.asarray(items, np.float32))
    return (F.normalize(u, dim=-1) @ F.normalize(v, dim=-1).T).numpy()
