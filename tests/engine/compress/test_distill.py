"""The distill stage (the KD loss itself is the task's: tests/engine/tasks/)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine.compress import STAGES, StageContext
from engine.compress.distill import (
    DistillConfig,
    attention_mse,
    ensemble_logits,
    hidden_mse,
    layer_mapping,
)
from engine.compress.truncate import TruncateRecord
from engine.tasks import get_task
from engine.train import train_classifier
from tests.conftest import tiny_bert, toy_batches

kd_loss = get_task("rating_classification").kd_loss  # the study task's combined KD loss


def _train_data(n: int = 32) -> dict[str, torch.Tensor]:
    batches = toy_batches(n_batches=n // 8, batch_size=8, seed=3)
    return {
        k: torch.cat([b[k] for b in batches]) for k in ("input_ids", "attention_mask", "labels")
    }


def test_training_is_reproducible_under_a_seed() -> None:
    data = _train_data()
    models = []
    for _ in range(2):
        m = tiny_bert(num_layers=2, seed=1)
        train_classifier(
            m,
            data,
            loss_fn=lambda s, y, _t: F.cross_entropy(s, y),
            epochs=1,
            lr=1e-3,
            batch_size=8,
            seed=7,
        )
        models.append(m)
    for p1, p2 in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(p1, p2)


def test_distill_stage_pulls_student_towards_teacher() -> None:
    """With α_task = 0 the student is trained only to match the teacher's logits: the KL on the
    training set must drop well below its starting value."""
    data = _train_data(64)
    teacher = tiny_bert(num_layers=2, seed=5)
    with torch.no_grad():
        t_logits = (
            3 * teacher(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
        )
    student = tiny_bert(num_layers=1, seed=9).train()
    cfg = DistillConfig(
        temperature=1.0,
        alpha_distill=1.0,
        alpha_task=0.0,
        epochs=8,
        lr=3e-3,
        batch_size=16,
        warmup_ratio=0.0,
        freeze_embeddings=False,
    )

    def kl() -> float:
        student.eval()
        with torch.no_grad():
            s = student(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
        return float(
            kd_loss(s, data["labels"], t_logits, temperature=1.0, alpha_distill=1.0, alpha_task=0.0)
        )

    before = kl()
    ctx = StageContext(teacher=teacher, train=data, teacher_logits=t_logits, importance={}, seed=0)
    STAGES.get("distill")(student, cfg, ctx)
    after = kl()
    assert after < 0.5 * before
    assert ctx.record["distill"]["steps"] == 8 * 4


def test_kd_off_ignores_the_teacher() -> None:
    """kd: false must train on labels only: garbage teacher logits change nothing."""
    data = _train_data()
    results = []
    for t_logits in (torch.zeros(32, 5), 100 * torch.randn(32, 5)):
        m = tiny_bert(num_layers=1, seed=2)
        ctx = StageContext(teacher=m, train=data, teacher_logits=t_logits, importance={}, seed=0)
        STAGES.get("distill")(m, DistillConfig(kd=False, epochs=1, batch_size=8), ctx)
        results.append([p.detach().clone() for p in m.parameters()])
        assert ctx.record["distill"]["alpha_distill"] == 0.0
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- additions


def test_ensemble_logits_and_kd_loss_by_hand() -> None:
    z1 = torch.tensor([[1.0, 0.0, -1.0]])
    z2 = torch.tensor([[0.0, 2.0, 1.0]])
    ens = ensemble_logits([z1, z2], (1.0, 3.0))
    torch.testing.assert_close(ens, torch.tensor([[0.25, 1.5, 0.5]]))
    s, y, temp = torch.tensor([[0.5, 0.5, 0.0]]), torch.tensor([1]), 2.0
    pt = [math.exp(v / temp) for v in (0.25, 1.5, 0.5)]
    pt = [v / sum(pt) for v in pt]
    ps = [math.exp(v / temp) for v in (0.5, 0.5, 0.0)]
    ps = [v / sum(ps) for v in ps]
    kl = sum(p * math.log(p / q) for p, q in zip(pt, ps, strict=True))
    got = kd_loss(s, y, ens, temperature=temp, alpha_distill=1.0, alpha_task=0.0)
    assert float(got) == pytest.approx(temp**2 * kl, rel=1e-5)  # float32
    with pytest.raises(ValueError, match="2 teacher weights for 1"):
        ensemble_logits([z1], (1.0, 1.0))


def test_hidden_and_attention_mse_by_hand() -> None:
    mask = torch.tensor([[1, 1, 0]])
    emb = torch.zeros(1, 3, 2)
    s1 = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [9.0, 9.0]]])
    t1 = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])  # teacher layer 0
    t2 = torch.tensor([[[1.0, 2.0], [0.0, 2.0], [5.0, 5.0]]])  # teacher layer 1
    # student layer 0 ↔ teacher layer 1: squared errors on the 2 real tokens: 0 + 4 → 4 / (2·2)
    got = hidden_mse((emb, s1), (emb, t1, t2), [1], mask)
    assert float(got) == pytest.approx(4 / 4)
    # mapped to teacher layer 0: 1 + 4 + 1 + 1 = 7 → 7 / 4
    assert float(hidden_mse((emb, s1), (emb, t1, t2), [0], mask)) == pytest.approx(7 / 4)
    # attention: 2 heads, averaged → compare on the 2×2 real block
    a_s = torch.zeros(1, 2, 3, 3)
    a_s[0, 0, :, 0] = 1.0  # head 0 looks at token 0, head 1 at nothing → mean 0.5 at column 0
    a_t = torch.zeros(1, 1, 3, 3)
    a_t[0, 0, :, 1] = 1.0
    # real block: mean map has 0.5 in column 0, teacher 1 in column 1 → (0.25 + 1) · 2 rows / 4
    got = attention_mse((a_s,), (a_t,), [0], mask)
    assert float(got) == pytest.approx((0.25 + 1.0) * 2 / 4)


def test_layer_mapping() -> None:
    assert layer_mapping(2, 6, [1, 4]) == [1, 4]  # truncate's kept layers
    assert layer_mapping(2, 6, None) == [2, 5]  # = truncate's uniform strategy
    assert layer_mapping(3, 6, None) == [1, 3, 5]
    assert layer_mapping(4, 4, [0, 1]) == [0, 1, 2, 3]  # kept list of another depth is ignored


def test_feature_distillation_pulls_hidden_states_to_the_teacher() -> None:
    data = _train_data(32)
    teacher = tiny_bert(num_layers=4, seed=5)
    student = tiny_bert(num_layers=2, seed=9)  # unrelated weights: far from the teacher
    cfg = DistillConfig(alpha_distill=0.0, alpha_task=1e-6, alpha_hidden=1.0, alpha_attention=1.0,
                        epochs=6, lr=2e-3, batch_size=8, warmup_ratio=0.0,
                        freeze_embeddings=False)  # fmt: skip
    ctx = StageContext(teacher=teacher, train=data, teacher_logits=torch.zeros(32, 5),
                       importance={}, seed=0)  # fmt: skip
    ctx.records["truncate"] = TruncateRecord(strategy="uniform", kept_layers=[1, 3], of=4)

    def mse() -> float:
        kw = {"input_ids": data["input_ids"], "attention_mask": data["attention_mask"],
              "output_hidden_states": True}  # fmt: skip
        with torch.no_grad():
            hs, ht = student(**kw).hidden_states, teacher(**kw).hidden_states
        return float(hidden_mse(hs, ht, [1, 3], data["attention_mask"]))

    before = mse()
    STAGES.get("distill")(student, cfg, ctx)
    assert mse() < 0.5 * before
    assert ctx.record["distill_features"]["layer_map"] == [1, 3]
    assert student.config._attn_implementation == teacher.config._attn_implementation == "sdpa"


def test_ensemble_with_zero_weight_on_the_first_teacher_is_the_second_teacher() -> None:
    data = _train_data()
    other = 5 * torch.randn(32, 5, generator=torch.Generator().manual_seed(4))
    results = []
    for t_logits, weights, extra in (
        (torch.zeros(32, 5), (0.0, 1.0), [other]),
        (other, None, []),
    ):
        m = tiny_bert(num_layers=1, seed=2)
        ctx = StageContext(teacher=m, train=data, teacher_logits=t_logits, importance={}, seed=0)
        ctx.extra_teacher_logits = extra
        STAGES.get("distill")(
            m, DistillConfig(epochs=1, batch_size=8, teacher_weights=weights), ctx
        )
        results.append([p.detach().clone() for p in m.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- ensemble from the study


def _direct_logits(model: torch.nn.Module, data: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(
            input_ids=data["input_ids"], attention_mask=data["attention_mask"]
        ).logits


def test_study_file_ensemble_targets_the_hand_weighted_mean_of_the_teachers(tmp_path) -> None:
    """teachers: [{teacher, 3}, {A, 1}, {B, 2}] → target (3·z_0 + z_A + 2·z_B) / 6, with A a
    plain save_pretrained directory and B saved by the engine (compression.json)."""
    from engine.compress.distill import teacher_targets
    from engine.compress.save import save_compressed

    data = _train_data()
    a, b = tiny_bert(num_layers=2, seed=11), tiny_bert(num_layers=3, seed=12)
    a.save_pretrained(tmp_path / "a")
    save_compressed(b, tmp_path / "b", records={})
    z0 = 4 * torch.randn(32, 5, generator=torch.Generator().manual_seed(7))
    za, zb = _direct_logits(a, data), _direct_logits(b, data)
    assert not torch.allclose(za, zb)
    cfg = DistillConfig(
        epochs=1, batch_size=8,
        teachers=[{"path": "teacher", "weight": 3}, {"path": str(tmp_path / "a"), "weight": 1},
                  {"path": str(tmp_path / "b"), "weight": 2}],
    )  # fmt: skip
    student = tiny_bert(num_layers=1, seed=2)
    ctx = StageContext(teacher=student, train=data, teacher_logits=z0, importance={}, seed=0)
    hand = (3 * z0 + za + 2 * zb) / 6
    torch.testing.assert_close(teacher_targets(cfg, ctx), hand, rtol=1e-5, atol=1e-5)
    STAGES.get("distill")(student, cfg, ctx)
    assert ctx.record["distill"]["teachers"] == 3
    weights = [t["weight"] for t in ctx.record["distill"]["ensemble"]]
    assert weights == pytest.approx([0.5, 1 / 6, 1 / 3])
    # the same training as the ctx.extra_teacher_logits route given the same logits and weights
    twin = tiny_bert(num_layers=1, seed=2)
    ctx2 = StageContext(teacher=twin, train=data, teacher_logits=z0, importance={}, seed=0)
    ctx2.extra_teacher_logits = [za, zb]
    STAGES.get("distill")(twin, DistillConfig(epochs=1, batch_size=8, teacher_weights=(3, 1, 2)),
                          ctx2)  # fmt: skip
    for p, q in zip(student.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_ensemble_teacher_with_other_labels_is_a_clear_error(tmp_path) -> None:
    tiny_bert(num_labels=3).save_pretrained(tmp_path / "three")
    data = _train_data()
    m = tiny_bert(num_layers=1)
    ctx = StageContext(teacher=m, train=data, teacher_logits=torch.zeros(32, 5), importance={},
                       seed=0)  # fmt: skip
    cfg = DistillConfig(teachers=[{"path": "teacher", "weight": 1},
                                  {"path": str(tmp_path / "three"), "weight": 1}])  # fmt: skip
    with pytest.raises(ValueError, match=r"gives logits \(32, 3\), the study's teacher \(32, 5\)"):
        STAGES.get("distill")(m, cfg, ctx)


@pytest.mark.parametrize(
    ("teachers", "extra", "message"),
    [
        ([{"path": "teacher", "weight": 0}], {}, "greater than 0"),
        ([{"path": "teacher", "weight": -1}], {}, "greater than 0"),
        ([{"path": "/no/such/model", "weight": 1}], {}, "neither 'teacher' nor a directory"),
        ([{"path": "teacher", "weight": 1}] * 2, {}, "lists a path twice"),
        ([], {}, "at least 1"),
        ([{"path": "teacher", "weight": 1}], {"teacher_weights": (1.0,)}, "not both"),
    ],
)
def test_ensemble_teacher_config_is_validated(teachers, extra, message) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        DistillConfig(teachers=teachers, **extra)
