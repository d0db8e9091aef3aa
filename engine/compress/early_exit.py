"""``early_exit`` stage: confidence-threshold exits after intermediate layers (BERT family).

A linear exit head on the [CLS] hidden state sits after each layer in ``exit_layers``
(default: every layer but the last, whose exit is the model's own pooler + classifier). The
backbone is frozen; the heads are trained on the backbone's cached [CLS] states with the KD
loss (teacher logits + labels) for ``steps`` steps. At inference an example leaves at the
first exit whose max softmax probability reaches ``threshold``; the rest go on, so a batch
shrinks as it climbs (DeeBERT, Xin et al. 2020). Latency is measured on that real forward.

``gflops`` of the wrapped model is the worst case (every layer and every exit head: under
fvcore's trace nothing exits); ``exit_curve`` (written by :func:`engine.assess.assess`) gives,
per threshold, the test quality and the average number of layers executed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from transformers import PreTrainedModel

from engine.compress.base import StageContext, StageRecord, register_stage
from engine.configbase import KDConfig
from engine.models import layer_list
from engine.tasks import DEFAULT_TASK, Task, get_task
from engine.train import BatchOrder, TrainingState, progress_hook

__all__ = ["EarlyExitClassifier", "EarlyExitConfig", "EarlyExitRecord", "apply"]

EXITS = "exit_heads.safetensors"  # the exit heads' weights beside the saved backbone
LEGACY_EXITS = "exit_heads.pt"  # what models saved before safetensors hold (loaded safely)


class EarlyExitConfig(KDConfig):
    """Confidence-threshold exits after intermediate layers (BERT family; the last stage).

    ``exit_layers`` (0-based, default every layer but the last) get a linear head on the [CLS]
    state, trained for ``steps`` on the frozen backbone with the KD loss; inference exits at
    the first head whose max softmax ≥ ``threshold``. ``thresholds`` are reported as a curve.
    """

    exit_layers: tuple[int, ...] | None = None
    threshold: float = Field(0.9, gt=0, le=1)
    thresholds: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
    steps: int = Field(200, ge=1)
    lr: float = Field(1e-3, gt=0, lt=1)
    batch_size: int = Field(32, ge=1)


@dataclass(frozen=True)
class EarlyExitRecord(StageRecord):
    """The exits built, the serving threshold, the curve's thresholds, the heads' training."""

    exit_layers: list[int]
    threshold: float
    thresholds: list[float]
    steps: int
    final_loss: float


def _columns(
    record: EarlyExitRecord | None, model: Any, splits: dict[str, Any], row: dict, task: Task
) -> dict[str, Any]:
    """``exit_curve``: quality (the task's metrics) and depth per threshold on test."""
    if record is None or not hasattr(model, "exit_curve"):
        return {}
    curve = model.exit_curve(splits["test"], tuple(record.thresholds), task=task)
    return {"exit_curve": json.dumps(curve)}


def _save(model: nn.Module, record: EarlyExitRecord, out_dir: Path) -> nn.Module:
    """The backbone is saved as a plain model, the exit heads apart."""
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in model.exits.state_dict().items()}, Path(out_dir) / EXITS
    )
    return model.backbone


def _load(model: nn.Module, record: EarlyExitRecord, out_dir: Path) -> nn.Module:
    wrapped = EarlyExitClassifier(model, record.exit_layers, record.threshold)
    from safetensors.torch import load_file

    path = Path(out_dir) / EXITS
    if path.is_file():
        state = load_file(path, device="cpu")
    else:
        state = torch.load(Path(out_dir) / LEGACY_EXITS, map_location="cpu", weights_only=True)
    wrapped.exits.load_state_dict(state)
    return wrapped.eval()


def _block_out(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


class EarlyExitClassifier(nn.Module):
    """A BERT-family classifier with exit heads; ``forward`` exits early per example."""

    def __init__(self, backbone: PreTrainedModel, exit_layers: list[int], threshold: float):
        super().__init__()
        if not hasattr(backbone, "bert") and not hasattr(backbone, "roberta"):
            raise ValueError(f"early exit supports BERT-family encoders, not {type(backbone)}")
        self.backbone = backbone
        self.config = backbone.config
        hidden, labels = backbone.config.hidden_size, backbone.config.num_labels
        self.exit_layers = sorted(exit_layers)
        self.exits = nn.ModuleDict({str(i): nn.Linear(hidden, labels) for i in self.exit_layers})
        self.threshold = threshold
        self.last_layers_executed: float = float("nan")

    def _start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        from transformers.masking_utils import create_bidirectional_mask

        base = self.backbone.base_model
        h = base.embeddings(input_ids=input_ids)
        mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=h, attention_mask=attention_mask
        )
        return h, mask

    def _final(self, h: torch.Tensor) -> torch.Tensor:
        base = self.backbone.base_model
        pooled = base.pooler(h) if base.pooler is not None else h[:, 0]
        return self.backbone.classifier(self.backbone.dropout(pooled))

    def all_exits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Full pass: ([CLS] state at each exit layer, logits at each exit + the final)."""
        h, mask = self._start(input_ids, attention_mask)
        cls, logits = [], []
        for i, block in enumerate(layer_list(self.backbone)):
            h = _block_out(block(h, mask))
            if str(i) in self.exits:
                cls.append(h[:, 0])
                logits.append(self.exits[str(i)](h[:, 0]))
        logits.append(self._final(h))
        return cls, logits

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any
    ) -> SimpleNamespace:
        if torch.jit.is_tracing():
            # cost counting (fvcore traces): the worst case, every layer and every exit head;
            # the exits are summed in so the tracer does not drop them as dead code
            return SimpleNamespace(
                logits=torch.stack(self.all_exits(input_ids, attention_mask)[1]).sum(0)
            )
        h, mask = self._start(input_ids, attention_mask)
        n = h.shape[0]
        out = torch.empty(n, self.config.num_labels, device=h.device, dtype=h.dtype)
        active = torch.arange(n, device=h.device)
        layers_run = 0
        for i, block in enumerate(layer_list(self.backbone)):
            h = _block_out(block(h, mask))
            layers_run += len(active)
            if str(i) not in self.exits:
                continue
            z = self.exits[str(i)](h[:, 0])
            done = F.softmax(z.float(), -1).max(-1).values >= self.threshold
            out[active[done]] = z[done]
            keep = ~done
            active, h = active[keep], h[keep]
            mask = mask[keep] if mask is not None else None
            if len(active) == 0:
                self.last_layers_executed = layers_run / n
                return SimpleNamespace(logits=out)
        out[active] = self._final(h)
        self.last_layers_executed = layers_run / n
        return SimpleNamespace(logits=out)

    @torch.no_grad()
    def exit_curve(
        self,
        data: dict[str, np.ndarray],
        thresholds: tuple[float, ...],
        batch_size: int = 64,
        task: str | Task = DEFAULT_TASK,
    ) -> list[dict[str, float]]:
        """Quality and average layers executed at each threshold, from one full pass (the
        same decision rule as ``forward``)."""
        self.eval()
        device = next(self.parameters()).device
        per_exit: list[list[torch.Tensor]] = []
        for s in range(0, len(data["input_ids"]), batch_size):
            ids = torch.as_tensor(data["input_ids"][s : s + batch_size], device=device)
            mask = torch.as_tensor(data["attention_mask"][s : s + batch_size], device=device)
            per_exit.append([z.float().cpu() for z in self.all_exits(ids, mask)[1]])
        logits = [torch.cat(zs) for zs in zip(*per_exit, strict=True)]  # per exit [N, C]
        depth = [i + 1 for i in self.exit_layers] + [len(layer_list(self.backbone))]
        conf = torch.stack([F.softmax(z, -1).max(-1).values for z in logits[:-1]])
        rows = []
        for t in thresholds:
            hit = torch.cat([conf >= t, torch.ones(1, conf.shape[1], dtype=torch.bool)])
            first = hit.int().argmax(0)  # index of the first exit taken
            taken = torch.stack(logits)[first, torch.arange(first.shape[0])]  # [N, C]
            m = get_task(task).score(taken.numpy(), data)
            layers = torch.as_tensor(depth, dtype=torch.float)[first]
            rows.append({"threshold": t, **m, "avg_layers": float(layers.mean())})
        return rows


def _train_heads(model: EarlyExitClassifier, cfg: EarlyExitConfig, ctx: StageContext) -> float:
    """Train the exit heads on cached [CLS] states of the frozen backbone.

    The loop runs on a :class:`engine.train.TrainingState` (constant lr, batches drawn with
    replacement) handed to each report, so it reports every ``report.every`` steps through
    ``ctx.report`` and a trial checkpoint taken then lets a retry (``ctx.resume``) continue at
    that step: the features are recomputed (frozen backbone, eval mode), heads, AdamW moments
    and the sampler's state come from the checkpoint.
    """
    train = ctx.train
    n = int(train["labels"].shape[0])
    feats: list[list[torch.Tensor]] = []
    model.eval()
    with torch.no_grad():
        for s in range(0, n, 64):
            ids = train["input_ids"][s : s + 64].to(ctx.device)
            mask = train["attention_mask"][s : s + 64].to(ctx.device)
            feats.append(model.all_exits(ids, mask)[0])
    cls = [torch.cat(f) for f in zip(*feats, strict=True)]
    heads = [model.exits[str(i)] for i in model.exit_layers]
    opt = torch.optim.AdamW([p for h in heads for p in h.parameters()], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)  # constant lr
    batches = BatchOrder.seeded(n, cfg.batch_size, ctx.seed, replacement=True)
    use_teacher = cfg.kd and cfg.alpha_distill > 0
    a_d, a_t = (cfg.alpha_distill, cfg.alpha_task) if cfg.kd else (0.0, 1.0)
    hook = progress_hook(model, ctx.report) if ctx.report else None
    st = TrainingState(model, opt, sched, batches, cfg.steps)
    if ctx.resume is not None:
        ctx.resume.restore(st)
    while st.step < cfg.steps:
        idx = batches.next()
        y = train["labels"][idx].to(ctx.device)
        t = ctx.teacher_logits[idx].to(ctx.device) if use_teacher else None
        loss = sum(
            ctx.task.kd_loss(h(c[idx.to(c.device)]), y, t, temperature=cfg.temperature,
                    alpha_distill=a_d, alpha_task=a_t)
            for h, c in zip(heads, cls, strict=True)
        )  # fmt: skip
        st.optimize(loss, len(idx))
        if hook is not None:
            hook(st.step, st.losses[-1], st)
    model.eval()  # a report's measurement leaves the model in training mode
    return st.losses[-1] if st.losses else 0.0


def _exit_layers(cfg: EarlyExitConfig, backbone: nn.Module) -> list[int]:
    total = len(layer_list(backbone))
    exits = list(cfg.exit_layers) if cfg.exit_layers else list(range(total - 1))
    if min(exits) < 0 or max(exits) >= total - 1:
        raise ValueError(f"exit_layers {exits} must lie in [0, {total - 2}] (the last is final)")
    return exits


def _rebuild(backbone: PreTrainedModel, cfg: EarlyExitConfig) -> EarlyExitClassifier:
    """The wrapper a checkpoint taken while the exit heads trained is rebuilt as."""
    return EarlyExitClassifier(backbone, _exit_layers(cfg, backbone), cfg.threshold)


@register_stage(
    "early_exit",
    config=EarlyExitConfig,
    record=EarlyExitRecord,
    train_steps=lambda cfg, n_train: cfg.steps,
    resumable=True,
    tasks=("rating_classification",),
    tasks_reason="it exits on a classifier's softmax confidence at [CLS]",
    rebuild=_rebuild,
    last=True,
    last_reason="its exits decide how deep the finished model runs",
    columns=_columns,
    save=_save,
    load=_load,
    plain_reload=False,
)
def apply(model: PreTrainedModel, cfg: EarlyExitConfig, ctx: StageContext) -> nn.Module:
    backbone = model.backbone if isinstance(model, EarlyExitClassifier) else model
    exits = _exit_layers(cfg, backbone)
    if isinstance(model, EarlyExitClassifier):  # resumed from a checkpoint of this stage
        if ctx.resume is None or model.exit_layers != sorted(exits):
            raise ValueError("early_exit got a model that has exit heads already")
        wrapped, model = model.to(ctx.device), model.backbone
    else:
        wrapped = EarlyExitClassifier(model, exits, cfg.threshold).to(ctx.device)
    for p in model.parameters():
        p.requires_grad_(False)
    final_loss = _train_heads(wrapped, cfg, ctx)
    ctx.records["early_exit"] = EarlyExitRecord(
        exit_layers=exits,
        threshold=cfg.threshold,
        thresholds=list(cfg.thresholds),
        steps=cfg.steps,
        final_loss=final_loss,
    )
    return wrapped
