"""Training under memory pressure and in bf16: ``train_classifier`` halves the examples per
forward on a device out-of-memory error (gradients accumulated, so the optimizer step is the
unsplit batch's), counts the retries, and runs forwards under autocast when asked.

The out-of-memory condition is real control flow, not a mock: a forward pre-hook on the
embeddings raises ``torch.OutOfMemoryError`` — the type PyTorch's CUDA allocator raises —
whenever a forward gets more than ``limit`` examples, as a GPU with room for ``limit``
examples would.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from engine.device import autocast
from engine.measure import evaluate
from engine.train import BatchOrder, OomLog, train_classifier
from tests.conftest import Live, tiny_bert


def _ce(s: torch.Tensor, y: torch.Tensor, _t: torch.Tensor | None) -> torch.Tensor:
    return F.cross_entropy(s, y)


def _no_dropout_bert():
    m = tiny_bert(num_layers=2)
    for mod in m.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    return m


def _train_data(n: int = 24, seq: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 200, (n, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, seq - 4 :] = 0  # uneven padding: per-example losses differ
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.randint(0, 5, (n,), generator=g),
    }


def _limit_examples(model: torch.nn.Module, limit: int, seen: list[int]):
    """A GPU with room for ``limit`` examples per forward."""

    def hook(_mod, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen.append(int(ids.shape[0]))
        if ids.shape[0] > limit:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {ids.shape[0]} examples (room for {limit})"
            )

    return model.bert.embeddings.register_forward_pre_hook(hook, with_kwargs=True)


def _train(model, train, **kw):
    return train_classifier(
        model, train, loss_fn=_ce, epochs=1.0, lr=1e-3, batch_size=8, seed=0,
        freeze_embeddings=False, **kw,
    )  # fmt: skip


def test_oom_halves_the_forward_and_keeps_the_unsplit_step(caplog) -> None:
    train = _train_data()
    ref = _no_dropout_bert()
    ref_stats = _train(ref, train)  # 24 rows / 8 = 3 steps, no pressure
    model, seen, log = _no_dropout_bert(), [], OomLog()
    handle = _limit_examples(model, 3, seen)
    try:
        with caplog.at_level(logging.WARNING, logger="engine.train"):
            stats = _train(model, train, oom=log)
    finally:
        handle.remove()
    # step 1: 8 fails, 4 fails, then 2+2+2+2; later steps keep micro-batches of 2
    assert seen[:2] == [8, 4] and set(seen[2:]) == {2}
    assert len(seen) == 2 + 3 * 4
    assert (stats.oom_retries, stats.micro_batch_size) == (2, 2)
    assert (log.retries, log.micro_batch_size) == (2, 2)
    assert stats.steps == ref_stats.steps == 3 and stats.examples_seen == 24
    assert sum("out of memory" in r.getMessage() for r in caplog.records) == 2
    # same batches, same batch-mean loss, same AdamW steps: the unsplit run's weights
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert stats.final_loss == pytest.approx(ref_stats.final_loss, rel=1e-5)


def test_accumulated_gradient_equals_the_batch_mean_gradient() -> None:
    """One step's gradient with micro-batches of 3 (8 = 3 + 3 + 2, weights 3/8, 3/8, 2/8)
    against the batch's mean loss differentiated in one piece."""
    train = _train_data(n=8)
    grads = {}
    for limit in (8, 3):
        model, seen = _no_dropout_bert(), []
        handle = _limit_examples(model, limit, seen)
        captured = {}

        def grab(opt, captured=captured, model=model):
            def before_step(_opt, _args, _kwargs):
                for n, p in model.named_parameters():
                    if p.grad is not None:
                        captured[n] = p.grad.clone()

            opt.register_step_pre_hook(before_step)

        try:
            _train(model, train, max_steps=1, on_optimizer=grab)
        finally:
            handle.remove()
        grads[limit] = captured
    assert grads[8].keys() == grads[3].keys() and grads[8]
    for name in grads[8]:
        torch.testing.assert_close(grads[3][name], grads[8][name], rtol=1e-5, atol=1e-7, msg=name)


def test_oom_at_one_example_and_other_errors_are_raised() -> None:
    train = _train_data(n=8)
    model, seen = _no_dropout_bert(), []
    handle = _limit_examples(model, 0, seen)  # nothing fits
    try:
        with pytest.raises(torch.OutOfMemoryError):
            _train(model, train)
    finally:
        handle.remove()
    assert seen == [8, 4, 2, 1]

    def boom(_mod, _args):
        raise RuntimeError("shape mismatch, not memory")

    model = _no_dropout_bert()
    handle = model.bert.embeddings.register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="shape mismatch"):
            _train(model, train)
    finally:
        handle.remove()


def test_checkpoint_snapshot_keeps_the_micro_batch() -> None:
    train = _train_data()
    model, seen = _no_dropout_bert(), []
    snaps = []
    handle = _limit_examples(model, 5, seen)
    try:
        _train(model, train, report=Live(lambda _s, st: snaps.append(st.snapshot())))
    finally:
        handle.remove()
    assert [s["micro_batch"] for s in snaps] == [4, 4, 4]
    assert [s["oom_retries"] for s in snaps] == [1, 1, 1]


def _forward_dtypes(model: torch.nn.Module) -> tuple[list[torch.dtype], object]:
    dtypes: list[torch.dtype] = []
    lin = model.bert.encoder.layer[0].attention.self.query
    return dtypes, lin.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))


def test_bf16_autocast_runs_the_forwards_in_bf16_and_keeps_float32_weights() -> None:
    train = _train_data(n=16)
    model = _no_dropout_bert()
    dtypes, handle = _forward_dtypes(model)
    try:
        stats = _train(model, train, autocast_dtype=torch.bfloat16)
    finally:
        handle.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.isfinite(torch.tensor(stats.final_loss))
    # float32 training of the same model: the forwards stay float32
    model = _no_dropout_bert()
    dtypes, handle = _forward_dtypes(model)
    try:
        _train(model, train)
    finally:
        handle.remove()
    assert set(dtypes) == {torch.float32}


def test_evaluate_under_bf16_returns_float32_logits_close_to_float32() -> None:
    model = _no_dropout_bert()
    data = {k: v.numpy() for k, v in _train_data(n=12).items()}
    ref, _ = evaluate(model, data, batch_size=5, device="cpu")
    dtypes, handle = _forward_dtypes(model)
    try:
        got, metrics = evaluate(
            model, data, batch_size=5, device="cpu", autocast_dtype=torch.bfloat16
        )
    finally:
        handle.remove()
    assert set(dtypes) == {torch.bfloat16} and got.dtype == ref.dtype
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(ref), rtol=0.05, atol=0.05)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    with autocast(torch.device("cpu"), None):  # None is a no-op context
        pass


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_cuda_oom_halves_the_forward() -> None:
    """On a GPU: a forward over ``limit`` examples asks the caching allocator for twice the
    card's memory, so CUDA itself raises the out-of-memory error."""
    train = _train_data()
    model, seen = _no_dropout_bert().cuda(), []
    too_much = 2 * torch.cuda.get_device_properties(0).total_memory

    def hook(_mod, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen.append(int(ids.shape[0]))
        if ids.shape[0] > 3:
            torch.empty(too_much, dtype=torch.uint8, device="cuda")

    handle = model.bert.embeddings.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        stats = _train(model, train, device="cuda", autocast_dtype=torch.bfloat16)
    finally:
        handle.remove()
    assert (stats.oom_retries, stats.micro_batch_size) == (2, 2)
    assert stats.steps == 3 and torch.isfinite(torch.tensor(stats.final_loss))


# ------------------------------------------------------------- the training loop's definition


def test_one_constant_lr_step_is_a_hand_adamw_step() -> None:
    """One step at a constant LR on the whole training set equals AdamW's first step taken by
    hand from the gradient of the batch loss: m̂ = g, v̂ = g², so
    p ← p (1 − lr·wd) − lr · g / (|g| + eps) (Loshchilov & Hutter; torch's defaults
    β = (0.9, 0.999), eps = 1e-8). The frozen token embeddings do not move."""
    model = _no_dropout_bert().train()
    train = _train_data(n=12)
    lr, wd = 1e-3, 0.05
    frozen = {id(p) for p in model.get_input_embeddings().parameters()}  # the token embeddings
    params = {n: p for n, p in model.named_parameters() if id(p) not in frozen}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = model(input_ids=train["input_ids"], attention_mask=train["attention_mask"])
    loss = F.cross_entropy(out.logits, train["labels"])
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
    stats = train_classifier(
        model, train, loss_fn=_ce, epochs=1.0, lr=lr, batch_size=12, seed=3, weight_decay=wd,
        lr_schedule="constant",
    )  # fmt: skip
    assert stats.steps == 1 and stats.examples_seen == 12
    assert stats.final_loss == pytest.approx(float(loss.detach()), rel=1e-5)
    for name, p in model.named_parameters():
        if name in params:
            g = grads[name]
            expected = before[name] * (1 - lr * wd) - lr * g / (g.abs() + 1e-8)
        else:  # frozen: no gradient, no decay
            expected = before[name]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(("n", "batch_size"), [(10, 4), (12, 4), (5, 8), (1, 1)])
def test_batch_order_gives_each_row_once_per_epoch(n: int, batch_size: int) -> None:
    order = BatchOrder.seeded(n, batch_size, seed=7)
    again = BatchOrder.seeded(n, batch_size, seed=7)
    for _epoch in range(3):
        rows: list[int] = []
        while len(rows) < n:
            idx = order.next()
            assert torch.equal(idx, again.next())  # same seed, same order
            assert 1 <= len(idx) <= batch_size
            rows += idx.tolist()
        assert sorted(rows) == list(range(n))  # every row exactly once
    other = BatchOrder.seeded(100, 100, seed=8).next()
    assert not torch.equal(BatchOrder.seeded(100, 100, seed=7).next(), other)
    with pytest.raises(ValueError, match="empty"):
        BatchOrder.seeded(0, 4, seed=0)


def test_batch_order_with_replacement_draws_full_batches_in_range() -> None:
    order = BatchOrder.seeded(5, 8, seed=1, replacement=True)
    draws = [order.next() for _ in range(50)]
    assert all(len(d) == 5 and int(d.min()) >= 0 and int(d.max()) < 5 for d in draws)
    assert len({tuple(d.tolist()) for d in draws}) > 1  # not one fixed permutation
    assert any(len(set(d.tolist())) < 5 for d in draws)  # rows drawn with replacement


# 10 rows in batches of 4 → batches of 4, 4, 2 per epoch; written out by hand
STEP_CASES = [
    # epochs, max_steps, steps, examples seen
    (1.0, None, 3, 10),
    (2.0, None, 6, 20),
    (0.5, None, 2, 8),  # half an epoch of 3 batches rounds up to 2 batches
    (0.01, None, 1, 4),  # at least one step
    (2.0, 4, 4, 14),  # capped: a whole epoch (4+4+2) then one batch of the next
    (1.0, 10, 3, 10),  # a cap above the epoch count changes nothing
]


@pytest.mark.parametrize(("epochs", "max_steps", "steps", "seen"), STEP_CASES)
def test_step_counts_of_epochs_and_max_steps(epochs, max_steps, steps, seen) -> None:
    calls: list[int] = []
    stats = train_classifier(
        _no_dropout_bert(), _train_data(n=10), loss_fn=_ce, epochs=epochs, lr=1e-3,
        batch_size=4, seed=0, max_steps=max_steps, on_step=lambda s, _loss: calls.append(s),
    )  # fmt: skip
    assert calls == list(range(1, steps + 1))
    assert (stats.steps, stats.examples_seen) == (steps, seen)


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    def run(seed: int) -> dict[str, torch.Tensor]:
        m = _no_dropout_bert()
        train_classifier(m, _train_data(n=10), loss_fn=_ce, epochs=1.0, lr=1e-2, batch_size=4,
                         seed=seed)  # fmt: skip
        return {k: v.clone() for k, v in m.state_dict().items()}

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # another example order


def test_empty_training_set_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        train_classifier(
            _no_dropout_bert(), _train_data(n=12) | {"labels": torch.zeros(0, dtype=torch.long)},
            loss_fn=_ce, epochs=1.0, lr=1e-3, batch_size=4, seed=0,
        )  # fmt: skip
