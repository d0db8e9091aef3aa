"""Layer truncation: kept layers, copied weights, strategies, and the GFLOPs they save."""

from __future__ import annotations

import pytest
import torch

from engine.compress import STAGES, StageContext
from engine.compress.truncate import TruncateConfig, num_kept, select_layers
from engine.importance import LayerScores
from engine.models import keep_layers, layer_list, num_layers
from tests.conftest import tiny_bert, tiny_gpt2, tiny_llama, toy_batches


def _ctx(importance: dict[str, LayerScores] | None = None, seed: int = 0) -> StageContext:
    return StageContext(
        teacher=None,
        train={},
        teacher_logits=torch.empty(0),  # type: ignore[arg-type]
        importance=importance or {},
        seed=seed,
    )


def test_baseline_strategies_by_hand() -> None:
    assert select_layers("uniform", 2, 6, _ctx()) == [2, 5]
    assert select_layers("uniform", 3, 6, _ctx()) == [1, 3, 5]
    assert select_layers("uniform", 6, 6, _ctx()) == [0, 1, 2, 3, 4, 5]
    assert select_layers("first_last", 3, 6, _ctx()) == [0, 1, 5]
    assert select_layers("first_last", 1, 6, _ctx()) == [5]


def test_random_strategy_is_seeded() -> None:
    a = select_layers("random", 3, 12, _ctx(seed=1))
    assert a == select_layers("random", 3, 12, _ctx(seed=1))
    draws = {tuple(select_layers("random", 3, 12, _ctx(seed=s))) for s in range(10)}
    assert len(draws) > 1 and all(len(d) == 3 for d in draws)


def test_importance_strategy_keeps_top_k_in_forward_order() -> None:
    scores = LayerScores("fisher", (0.1, 0.9, 0.3, 0.8, 0.2, 0.05), num_examples=8)
    assert select_layers("fisher", 2, 6, _ctx({"fisher": scores})) == [1, 3]
    with pytest.raises(ValueError, match="no importance scores for strategy 'ablation'"):
        select_layers("ablation", 2, 6, _ctx({"fisher": scores}))


def test_keep_ratio_rounds_half_up() -> None:
    assert num_kept(TruncateConfig(keep_ratio=0.5), 6) == 3
    assert num_kept(TruncateConfig(keep_ratio=0.34), 6) == 2
    assert num_kept(TruncateConfig(keep_ratio=0.67), 6) == 4
    assert num_kept(TruncateConfig(keep_ratio=0.01), 6) == 1
    with pytest.raises(ValueError, match="exceeds"):
        num_kept(TruncateConfig(keep_layers=7), 6)


@pytest.mark.parametrize("factory", [tiny_bert, tiny_gpt2, tiny_llama])
def test_student_has_k_layers_with_teacher_weights(factory) -> None:
    teacher = factory(num_layers=4)
    student = STAGES.get("truncate")(
        teacher, TruncateConfig(keep_layers=2, strategy="first_last"), _ctx()
    )
    assert num_layers(student) == 2 and num_layers(teacher) == 4
    for s_block, t_idx in zip(layer_list(student), [0, 3], strict=True):
        t_block = layer_list(teacher)[t_idx]
        for (n1, p1), (n2, p2) in zip(
            s_block.named_parameters(), t_block.named_parameters(), strict=True
        ):
            assert n1 == n2 and torch.equal(p1, p2)
            assert p1.data_ptr() != p2.data_ptr()  # a copy: training the student spares the teacher


@pytest.mark.parametrize("factory", [tiny_bert, tiny_gpt2, tiny_llama])
def test_keeping_all_layers_reproduces_the_teacher(factory) -> None:
    teacher = factory(num_layers=3)
    same = keep_layers(teacher, [0, 1, 2])
    b = toy_batches(1)[0]
    with torch.no_grad():
        a = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        c = same(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    torch.testing.assert_close(a, c)


def test_truncated_student_matches_manual_forward() -> None:
    """Running the kept blocks by hand on the teacher gives the student's output
    (unpadded input, so no attention mask is needed)."""
    teacher = tiny_bert(num_layers=4)
    student = keep_layers(teacher, [1, 3])
    ids = toy_batches(1)[0]["input_ids"][4:]  # rows 4.. are unpadded in toy_batches
    with torch.no_grad():
        h = teacher.bert.embeddings(input_ids=ids)
        for i in (1, 3):
            h = teacher.bert.encoder.layer[i](h)
        expected = teacher.classifier(teacher.bert.pooler(h))
        got = student(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_truncation_lowers_fvcore_gflops_by_the_layer_cost() -> None:
    from engine.measure import count_gflops

    teacher = tiny_bert(num_layers=4)
    seq, h, i = 16, teacher.config.hidden_size, teacher.config.intermediate_size
    per_layer_gflops = 2 * seq * (4 * h * h + 2 * h * i + 2 * seq * h) / 1e9
    full = count_gflops(teacher, seq)
    for k in (1, 2, 3):
        student = keep_layers(teacher, list(range(k)))
        drop = full - count_gflops(student, seq)
        assert drop == pytest.approx((4 - k) * per_layer_gflops, rel=1e-6)
