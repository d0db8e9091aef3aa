"""Run importance methods on Ray actors and merge the results on the driver.

Each actor receives the model once (one ``ray.put``) and a contiguous shard of calibration
batches; it returns per-batch score vectors. The driver concatenates them in batch order and
re-averages (example-weighted), so any number of actors gives exactly the result of one.
Derived methods (hybrid, consensus) and bootstrap confidence intervals are computed on the
driver from the merged per-batch vectors.

GPUs: each actor asks Ray for ``gpus_per_actor`` GPUs and runs on the one Ray assigned it
(:func:`engine.device.worker_device`): with ``gpus_per_actor: 0.5`` two actors share a GPU,
with ``1`` each gets its own (on a node with several), and the driver logs where each went.

Example::

    ray.init(num_cpus=2)
    scores = compute_importance(model, data, ImportanceConfig(methods=("fisher", "ablation")))
    importance_table(scores)  # method, layer, score, rank, ci_low, ci_high, ...
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import ray
import torch
from torch import nn

from engine.device import ray_gpu_ids, worker_device
from engine.importance.base import (
    DERIVED,
    Batch,
    LayerScores,
    bootstrap_ci,
    merge_scores,
    rank_normalise,
)
from engine.importance.compute import expand_methods, score_methods
from engine.importance.config import ImportanceConfig
from engine.tasks import get_task

__all__ = ["ImportanceWorker", "calibration_batches", "compute_importance", "importance_table"]

log = logging.getLogger(__name__)

# actors together leave at least this share of the cluster's CPUs free (reads, driver)
CPU_HEADROOM = 0.25


def calibration_batches(data: Mapping[str, np.ndarray], cfg: ImportanceConfig) -> list[dict]:
    """The first ``num_batches × batch_size`` rows of ``data`` cut into numpy batches of the
    arrays ``cfg.task`` reads (token arrays as int64, targets in the task's dtype)."""
    view = get_task(cfg.task).view
    missing = [k for k in view.arrays if k not in data]
    if missing:
        raise ValueError(f"calibration data lacks keys {missing} (needs {list(view.arrays)})")
    rows = min(len(data["input_ids"]), cfg.num_batches * cfg.batch_size)
    if rows == 0:
        raise ValueError("calibration data has no rows")
    out = []
    for start in range(0, rows, cfg.batch_size):
        stop = min(start + cfg.batch_size, rows)
        out.append(
            {
                k: np.asarray(
                    data[k][start:stop], dtype=view.target_dtype if k == view.target else np.int64
                )
                for k in view.arrays
            }
        )
    return out


@ray.remote
class ImportanceWorker:
    """Holds one copy of the model; scores the batch shards it is sent."""

    def __init__(self, model: nn.Module, cfg: ImportanceConfig, threads: int) -> None:
        torch.set_num_threads(threads)
        self.device = worker_device(cfg.gpus_per_actor)  # the GPU Ray assigned, if any
        self.model = model.to(self.device).eval()
        self.cfg = cfg

    def node_id(self) -> str:
        """The Ray node this actor runs on (logged by the driver: where the work went)."""
        return ray.get_runtime_context().get_node_id()

    def placement(self) -> dict[str, object]:
        """Where this actor runs: Ray node, the GPU ids Ray assigned, the CUDA devices it
        sees (``CUDA_VISIBLE_DEVICES``, as Ray set it) and its torch device."""
        return {
            "node": self.node_id(),
            "gpu_ids": ray_gpu_ids() or [],
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": str(self.device),
        }

    def score(self, shard: list[dict], methods: tuple[str, ...]) -> dict[str, LayerScores]:
        batches: list[Batch] = [
            {k: torch.from_numpy(v).to(self.device) for k, v in b.items()} for b in shard
        ]
        return score_methods(self.model, batches, methods, self.cfg, derive=False)


def _cpus_per_actor(cfg: ImportanceConfig) -> float:
    """``cfg.cpus_per_actor``, capped so the actors never take every CPU of the cluster."""
    total = float(ray.cluster_resources().get("CPU", 1.0))
    cap = total * (1.0 - CPU_HEADROOM) / cfg.actors
    if cfg.cpus_per_actor > cap:
        log.info(
            "cpus_per_actor %.2f capped to %.2f (cluster CPUs %.1f)", cfg.cpus_per_actor, cap, total
        )
        return cap
    return cfg.cpus_per_actor


def compute_importance(
    model: nn.Module,
    data: Mapping[str, np.ndarray],
    cfg: ImportanceConfig,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, LayerScores]:
    """Score ``cfg.methods`` on calibration batches from ``data`` across ``cfg.actors`` actors.

    Each actor is sent its batches one call each (merged in batch order: the same result as
    one call per shard), so ``progress(done, total)`` is told, in batches × base methods,
    as calls finish.

    Returns method → LayerScores (raw scores, per-batch vectors, bootstrap CIs when there are
    ≥ 2 batches), for the requested methods only.

    Raises:
        RuntimeError: Ray is not initialised.
        UnknownNameError: a method is not registered.
    """
    if not ray.is_initialized():
        raise RuntimeError("compute_importance needs a running Ray: call ray.init() first")
    methods = expand_methods(cfg.methods, cfg)
    base = tuple(m for m in methods if m not in DERIVED)
    batches = calibration_batches(data, cfg)
    n_actors = min(cfg.actors, len(batches))
    num_cpus = _cpus_per_actor(cfg)
    threads = max(1, int(num_cpus))
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    model_ref = ray.put(model if on_cpu else copy.deepcopy(model).cpu())
    actors = [
        ImportanceWorker.options(num_cpus=num_cpus, num_gpus=cfg.gpus_per_actor).remote(
            model_ref, cfg, threads
        )
        for _ in range(n_actors)
    ]
    try:
        shards = [s.tolist() for s in np.array_split(np.arange(len(batches)), n_actors)]
        places = ray.get([a.placement.remote() for a in actors])
        for i, (where, shard) in enumerate(zip(places, shards, strict=True)):
            log.info(
                "importance actor %d on node %s, GPUs %s (%s): batches %s",
                i, where["node"], where["gpu_ids"], where["device"], shard,
            )  # fmt: skip
        futures = [
            a.score.remote([batches[i]], base)
            for a, shard in zip(actors, shards, strict=True)
            for i in shard
        ]  # batch order: shards are contiguous and in order
        total = len(futures) * len(base)
        if progress is not None:
            progress(0, total)
            pending = list(futures)
            while pending:
                _, pending = ray.wait(pending, num_returns=1)
                progress((len(futures) - len(pending)) * len(base), total)
        parts = ray.get(futures)
    finally:
        for a in actors:
            ray.kill(a)
    merged: dict[str, LayerScores] = {m: merge_scores([p[m] for p in parts]) for m in base}
    for m in methods:
        if m in DERIVED:
            merged[m] = DERIVED[m].combine(merged, cfg)
    return {
        m: bootstrap_ci(
            merged[m],
            samples=cfg.bootstrap_samples,
            level=cfg.ci_level,
            seed=cfg.seed,
            min_examples=cfg.ci_min_examples,
            min_batches=cfg.ci_min_batches,
        )
        for m in cfg.methods
    }


def importance_table(scores: Mapping[str, LayerScores] | Sequence[LayerScores]) -> pd.DataFrame:
    """One row per (method, layer): ``method, layer, score, rank, ci_low, ci_high, ci_unit,
    ci_units, ci_reliable, score_rank_normalised`` (rank 0 = most important; rank-normalised
    1 = most important; ``ci_unit`` = what the bootstrap resampled, "example" or "batch")."""
    items = list(scores.values()) if isinstance(scores, Mapping) else list(scores)
    rows = []
    for s in items:
        ranks = s.ranks()
        norm = rank_normalise(s.scores)
        for layer, value in enumerate(s.scores):
            rows.append(
                {
                    "method": s.method,
                    "layer": layer,
                    "score": float(value),
                    "rank": ranks[layer],
                    "ci_low": np.nan if s.ci_low is None else s.ci_low[layer],
                    "ci_high": np.nan if s.ci_high is None else s.ci_high[layer],
                    "ci_unit": s.ci_unit or "",
                    "ci_units": -1 if s.ci_units is None else int(s.ci_units),
                    "ci_reliable": s.ci_reliable is not None and s.ci_reliable[layer],
                    "score_rank_normalised": float(norm[layer]),
                }
            )
    cols = [
        "method",
        "layer",
        "score",
        "rank",
        "ci_low",
        "ci_high",
        "ci_unit",
        "ci_units",
        "ci_reliable",
        "score_rank_normalised",
    ]
    return pd.DataFrame(rows, columns=cols)
