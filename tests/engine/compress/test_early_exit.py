"""Early exit: the real per-example forward agrees with the threshold curve, never-exit equals
the backbone, cost counts every exit head, and save → reload is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.compress import STAGES, StageContext
from engine.compress.early_exit import EarlyExitConfig
from engine.compress.save import load_compressed, save_compressed
from engine.measure import count_multiply_adds, evaluate
from tests.conftest import tiny_bert, toy_batches


@pytest.fixture(scope="module")
def built() -> tuple[torch.nn.Module, torch.nn.Module, dict, StageContext]:
    bs = toy_batches(4, batch_size=8)
    train = {k: torch.cat([b[k] for b in bs]) for k in bs[0]}
    backbone = tiny_bert()
    reference = tiny_bert()  # same seed: the untouched backbone
    logits = torch.randn(32, 5, generator=torch.Generator().manual_seed(0))
    ctx = StageContext(teacher=None, train=train, teacher_logits=logits, importance={}, seed=0)
    model = STAGES.get("early_exit")(backbone, EarlyExitConfig(steps=40, threshold=0.3), ctx)
    return model, reference, {k: v.numpy() for k, v in train.items()}, ctx


def test_forward_agrees_with_the_exit_curve(built) -> None:
    model, _, data, _ = built
    for t in (0.21, 0.3, 0.4):
        model.threshold = t
        _, metrics = evaluate(model, data, batch_size=64, device="cpu")
        (row,) = model.exit_curve(data, (t,))
        assert metrics["accuracy"] == pytest.approx(row["accuracy"])
        assert model.last_layers_executed == pytest.approx(row["avg_layers"])
    model.threshold = 0.2  # ≤ 1/C: every max-softmax reaches it, all leave at the first exit
    evaluate(model, data, batch_size=64, device="cpu")
    assert model.last_layers_executed == 1.0


def test_never_exiting_is_the_backbone(built) -> None:
    model, reference, data, _ = built
    model.threshold = 1.0  # no softmax of a 5-class head reaches exactly 1 here
    logits, _ = evaluate(model, data, batch_size=64, device="cpu")
    ref, _ = evaluate(reference, data, batch_size=64, device="cpu")
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-6)
    assert model.last_layers_executed == 4.0
    curve = model.exit_curve(data, (1.0,))
    assert curve[0]["avg_layers"] == 4.0


def test_cost_counts_every_exit_head(built) -> None:
    model, reference, _, ctx = built
    heads = len(ctx.record["early_exit"]["exit_layers"])
    assert heads == 3
    assert count_multiply_adds(model, 12) - count_multiply_adds(reference, 12) == heads * 32 * 5


def test_save_and_reload_exact(built, tmp_path: Path) -> None:
    model, _, data, ctx = built
    model.threshold = 0.3
    save_compressed(model, tmp_path, records=ctx.records)
    again = load_compressed(tmp_path)
    again.threshold = 0.3
    a, _ = evaluate(model, data, batch_size=64, device="cpu")
    b, _ = evaluate(again, data, batch_size=64, device="cpu")
    np.testing.assert_array_equal(a, b)
    # every tensor file is safetensors: nothing in the directory needs unpickling
    tensors = sorted(p.name for p in tmp_path.iterdir() if p.suffix not in (".json",))
    assert tensors == ["exit_heads.safetensors", "model.safetensors"]


def test_a_model_saved_with_pickled_exit_heads_still_reloads(built, tmp_path: Path) -> None:
    """Directories written before safetensors hold ``exit_heads.pt`` (read weights-only)."""
    model, _, data, ctx = built
    model.threshold = 0.3
    save_compressed(model, tmp_path, records=ctx.records)
    (tmp_path / "exit_heads.safetensors").unlink()
    torch.save(model.exits.state_dict(), tmp_path / "exit_heads.pt")
    again = load_compressed(tmp_path)
    again.threshold = 0.3
    a, _ = evaluate(model, data, batch_size=64, device="cpu")
    b, _ = evaluate(again, data, batch_size=64, device="cpu")
    np.testing.assert_array_equal(a, b)


def test_bad_exit_layers() -> None:
    bs = toy_batches(1)[0]
    ctx = StageContext(teacher=None, train=bs, teacher_logits=torch.zeros(8, 5), importance={},
                       seed=0)  # fmt: skip
    with pytest.raises(ValueError, match="exit_layers"):
        STAGES.get("early_exit")(tiny_bert(), EarlyExitConfig(exit_layers=(3,)), ctx)
