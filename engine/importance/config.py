"""The ``importance:`` section of a study file."""

from __future__ import annotations

import difflib
from typing import Literal

from pydantic import Field, model_validator

from engine.configbase import Section

# the registry; the package import (which runs first) registers every method, derived ones too
from engine.importance.base import DERIVED, IMPORTANCE
from engine.tasks.base import DEFAULT_TASK

__all__ = ["ImportanceConfig", "problems"]


class ImportanceConfig(Section):
    """Which layer-importance methods to compute once per study, and on how much data.

    ``methods`` are registered names (see :data:`engine.importance.IMPORTANCE`). Scores are
    computed on ``num_batches`` calibration batches of ``batch_size`` training examples, split
    across ``actors`` Ray actors each holding the model once. Every other field is a parameter
    of one method, prefixed by the method's name.
    """

    methods: tuple[str, ...] = ("fisher", "ablation")
    num_batches: int = Field(4, ge=1)
    batch_size: int = Field(32, ge=1)
    actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1.0, ge=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    seed: int = Field(0, ge=0)
    # the study's task (set from ``task`` by the study config; not written to the manifest):
    # which loss and targets the loss-based methods use (engine.tasks)
    task: str = Field(DEFAULT_TASK, exclude=True)

    # confidence intervals: BCa bootstrap over examples where a method yields per-example
    # contributions, over calibration batches where it does not (base.bootstrap_ci); below
    # these counts, or where a layer's units are too skewed for their count (Cochran's rule,
    # n > 25·skewness²), an interval is flagged unreliable (ci_reliable = False)
    bootstrap_samples: int = Field(1000, ge=10)
    ci_level: float = Field(0.95, gt=0, lt=1)
    ci_min_examples: int = Field(100, ge=2)
    ci_min_batches: int = Field(50, ge=2)
    # bf16 autocast on CUDA for the gradient methods only (compute.BF16_SAFE); losses and
    # score reductions stay in float32/64, every other method runs in float32
    autocast_bf16: bool = True

    # ablation: "loss" = CE increase when skipped; "kl" = KL(clean ‖ skipped)
    ablation_metric: Literal["loss", "kl"] = "loss"
    # attention: "concentration" = 1 − normalised entropy (higher = sharper); "entropy"
    attention_score: Literal["concentration", "entropy"] = "concentration"
    # mutual_info: estimator of I(pooled layer output; label), computed per batch on a fixed
    # seeded random projection to mi_projection_dims dimensions; for a task whose targets are
    # input ids (next_item) the label is the target item's embedding (Kraskov k-NN). Pooling:
    # masked mean, first or last real token, or "head": where the model's head reads (the last
    # real token of a causal decoder, the first of an encoder)
    mi_estimator: Literal["knn", "binned"] = "knn"
    mi_neighbors: int = Field(3, ge=1)
    mi_bins: int = Field(4, ge=2)
    mi_projection_dims: int = Field(8, ge=1)
    mi_pooling: Literal["mean", "cls", "last", "head"] = "mean"
    # conductance: captum LayerConductance
    conductance_steps: int = Field(16, ge=2)
    conductance_internal_batch_size: int | None = Field(None, ge=1)
    # mc_dropout: dropout on one layer's residual update, mc_samples stochastic passes
    mc_samples: int = Field(8, ge=2)
    mc_dropout_p: float = Field(0.1, gt=0, lt=1)
    mc_metric: Literal["entropy", "variance"] = "entropy"
    # activation_patching: how the corrupted run is made
    patch_corruption: Literal["token_noise", "other_example"] = "token_noise"
    patch_noise_frac: float = Field(0.5, gt=0, le=1)
    # hybrid: weighted sum of per-batch normalised component scores
    hybrid_weights: dict[str, float] = Field(
        default_factory=lambda: {"fisher": 1.0, "attention": 1.0, "gradient": 1.0}
    )
    hybrid_normalisation: Literal["minmax", "rank", "zscore"] = "minmax"
    # agreement.parquet: "consensus 75 %" = share of layers whose top-k membership at least
    # this share of the (non-derived) methods agree on, in or out
    consensus_threshold: float = Field(0.75, gt=0.5, le=1)
    # consensus: mean rank-normalised score of these methods
    consensus_methods: tuple[str, ...] = (
        "fisher",
        "gradient",
        "taylor",
        "ablation",
        "block_influence",
    )

    @model_validator(mode="after")
    def _derived_inputs(self) -> ImportanceConfig:
        problems = []
        if not self.hybrid_weights:
            problems.append("hybrid_weights: needs at least one method")
        if any(w < 0 for w in self.hybrid_weights.values()):
            problems.append(f"hybrid_weights: weights must be ≥ 0 (got {self.hybrid_weights})")
        if not self.consensus_methods:
            problems.append("consensus_methods: needs at least one method")
        for key, names in (
            ("hybrid_weights", tuple(self.hybrid_weights)),
            ("consensus_methods", self.consensus_methods),
        ):
            bad = [n for n in names if n in ("hybrid", "consensus")]
            if bad:
                problems.append(f"{key}: cannot include derived methods {bad}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def problems(cfg: ImportanceConfig, source: str) -> list[str]:
    """Component names of the derived methods (``hybrid_weights``, ``consensus_methods``)
    that are not registered importance methods: found here, before Ray starts, instead of
    as a traceback in the importance actors. One line each, naming the key, the bad name,
    the nearest match and the allowed names."""
    allowed = [n for n in IMPORTANCE.names() if n not in DERIVED]
    out = []
    for key, names in (
        ("hybrid_weights", {n: n for n in cfg.hybrid_weights}),
        ("consensus_methods", {str(i): n for i, n in enumerate(cfg.consensus_methods)}),
    ):
        for at, name in names.items():
            if name in IMPORTANCE:
                continue
            near = difflib.get_close_matches(name, allowed, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            out.append(
                f"{source}: importance.{key}.{at}: unknown importance method {name!r}{hint} "
                f"(allowed: {', '.join(allowed)})"
            )
    return out
