"""``next_item``: rank the whole catalogue for a user; the held-out next item should be on top.

* data view: ``input_ids`` = the user's most recent item ids (left-padded with 0),
  ``attention_mask``, ``labels`` = the next item's id (1…V); valid and test rows also carry
  ``seen`` (every earlier item of the user) and, for ``sampled-N``, ``negatives``
  (:func:`engine.data.sequences.prepare_sequences`, leave-one-out);
* model (``sequence`` family): GPT-2 or Llama over item ids trained from scratch, a head of
  V + 1 catalogue scores (:mod:`engine.tasks.item_models`);
* task loss: full softmax cross-entropy over the catalogue; the teacher (trained from
  scratch) learns from every position of each training sequence at once (position t predicts
  the item at t + 1, the SASRec objective), the students from the pooled last position;
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
  training target (ties: the smaller item id, i.e. the more frequent item overall);
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
from engine.tasks.item_models import build_item_model, item_model_from_config, item_model_problem
from engine.tasks.ranking import RANKING_KS, ranking_metrics, sampled_ranks, target_ranks

__all__ = ["NextItem", "popularity_scores", "ranks_of"]


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
    teacher_defaults = MappingProxyType({"model": "scratch:gpt2", "freeze_embeddings": False})
    examples_dir = "rankings"
    targets_in_vocabulary = True  # targets and inputs are item ids

    # ------------------------------------------------------------------ data and model
    def prepare(self, data: Any, model: str) -> Any:
        from engine.data.sequences import prepare_sequences

        return prepare_sequences(data)

    def study_problems(self, study: Any) -> list[str]:
        problems = []
        if (problem := item_model_problem(study.teacher.model)) is not None:
            problems.append(f"teacher.model: {problem}")
        orders = [study.pipeline.order]
        orders += [p["pipeline.order"] for p in study.search.extra if "pipeline.order" in p]
        orders += list(study.search.space.get("pipeline.order", []) or [])
        if any("early_exit" in (o or ()) for o in orders if isinstance(o, list | tuple)):
            problems.append(
                "pipeline.order: early_exit supports BERT-family encoders (confidence exits at "
                "[CLS]); the next-item models are decoders over item ids"
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
        return build_item_model(
            name, num_outputs, attn_implementation=attn_implementation, seed=seed
        ).train()

    def model_from_config(self, config: dict[str, Any]) -> PreTrainedModel:
        return item_model_from_config(config)

    teacher_recipe = "all-positions-v2"  # v2: positions counted from the first item

    def teacher_training(self, train: Mapping[str, np.ndarray]) -> TeacherTraining:
        """The teacher learns the next item after *every* prefix of each training sequence
        at once (the causal SASRec objective): position t of the input predicts the item at
        t + 1, the last position the example's label; padding positions are ignored."""
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
        pop = popularity_scores(splits["train"]["labels"], num_outputs)
        row: dict[str, Any] = {}
        for name, prefix in (("valid", "valid_"), ("test", "")):
            split = splits.get(name)
            if split is None or len(split["labels"]) == 0:
                continue
            outputs = np.broadcast_to(pop, (len(split["labels"]), num_outputs))
            row.update({f"{prefix}{k}": v for k, v in self.score(outputs, split).items()})
        return {"popularity": row}
