"""Shared fixtures: one real local Ray for the whole session, tiny random HF models."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


# The teacher cache of every CLI run that does not test preparation itself: one per test
# session (never the user's), so a teacher the suite fine-tuned once at a given size is found
# cached by every later run of that size. Set by the ``_session_cache`` fixture below.
_SESSION_CACHE: list[Path] = []


def session_cache() -> Path:
    """The session's shared teacher cache (see ``_SESSION_CACHE``)."""
    return _SESSION_CACHE[0]


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory):
    _SESSION_CACHE[:] = [tmp_path_factory.mktemp("shared-cache")]
    yield _SESSION_CACHE[0]


def cli_env(cache: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment a CLI subprocess runs in: this process's, Ray token auth off, the
    teacher cache in ``cache`` (default: the session's shared one, never the user's), plus
    ``extra`` (e.g. ``PYTHONPATH``, ``TUNE_GLOBAL_CHECKPOINT_S``). A test of preparation
    itself (a cold cache, two independent fine-tunings) passes its own ``cache``."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env["COMPRESSION_SWEEPS_CACHE"] = str(cache if cache is not None else session_cache())
    return {**env, **extra}


def run_cli(
    module: str,
    *args: str,
    out: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess[str]:
    """``python -m <module> ARGS [--out OUT]`` from the repository root, output captured as
    text. ``env`` defaults to :func:`cli_env` (the session's shared teacher cache). The caller
    checks the exit code."""
    if env is None:
        env = cli_env()
    cmd = [sys.executable, "-m", module, *args]
    if out is not None:
        cmd += ["--out", str(out)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_sweep(
    *args: str,
    out: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess[str]:
    """``python -m engine.sweep ARGS [--out OUT]``: the real CLI in a subprocess (see
    :func:`run_cli`)."""
    return run_cli("engine.sweep", *args, out=out, env=env, timeout=timeout)


def _ray_session() -> tuple[bool, str | None]:
    """Whether this process is connected to Ray, and the newest local Ray session on disk."""
    import ray

    latest = Path(tempfile.gettempdir()) / "ray" / "session_latest"
    return ray.is_initialized(), os.path.realpath(latest) if latest.exists() else None


def sweep_in_process(
    *args: str, out: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m engine.sweep ARGS [--out OUT]`` for a command that must end *before Ray
    starts* (a user's mistake): the CLI's entry point ``engine.sweep.main`` in this process,
    under ``env`` added to the environment (restored after), its output captured. A
    subprocess would spend ~5 s importing what this process holds already. Asserts that the
    command neither started nor joined nor stopped a Ray (this process's connection and the
    newest local session are as they were), then returns what a subprocess run would: the exit
    code (argparse's ``SystemExit`` included) and the text written to stdout and stderr."""
    from engine.sweep import main

    argv = [*args, *(["--out", str(out)] if out is not None else [])]
    saved, before = dict(os.environ), _ray_session()
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        os.environ.update(env or {})
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse's own: --help (0) or a usage error (2)
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert _ray_session() == before, "the command reached Ray"
    return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())


_HALF_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from sweepcore.atomic import atomic_path

    data = sys.stdin.buffer.read()
    with atomic_path(Path(sys.argv[1])) as tmp, tmp.open("wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        print("half", flush=True)
        time.sleep(600)
        f.write(data[len(data) // 2 :])
    """
)


def kill_writer_half_way(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` through :func:`sweepcore.atomic.atomic_path` in a child
    process and SIGKILL it once half of ``data`` is on disk (checked: a temporary file of
    exactly that size sits beside ``target``)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HALF_WRITER, str(target)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(data)
        proc.stdin.close()
        assert proc.stdout.readline().strip() == b"half"
        halves = [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]
        assert [p.stat().st_size for p in halves] == [len(data) // 2]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


# the session's smoke run: the smoke study's 2 configurations (fisher, uniform) × 2 seeds
SMOKE_RUN = ("smoke", "repeats=[0, 1]")


@pytest.fixture(scope="session")
def smoke_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The ``smoke`` study at two seeds (``SMOKE_RUN``) through the real CLI, once per session,
    from a cold cache of its own (so its terminal shows the preparation, and the two-node test
    in ``e2e/test_multinode.py`` can compare it with a second cold run, bit for bit): the run
    directory and the finished process,
    for every read-only check of a run's outputs, report and terminal. Its cache
    (:func:`smoke_cache`) is ``RUN.parent / "cache"``."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    proc = run_sweep(*SMOKE_RUN, out=out, env=cli_env(out.parent / "cache"), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


@pytest.fixture(scope="session")
def smoke_cache(smoke_run: tuple[Path, subprocess.CompletedProcess[str]]) -> Path:
    """The session's prepared cache: the ``smoke`` run's (its data, teacher and importance,
    built once). Every end-to-end run that does not test preparation itself and prepares
    what ``smoke`` prepares (the ``smoke`` study, or ``pareto`` at ``PARETO_TINY`` sizes) runs
    with it, so it finds all three cached."""
    return smoke_run[0].parent / "cache"


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray (2 CPUs, small object store), shared by the tests that need one."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # never join another Ray found on the machine
            num_cpus=2,
            object_store_memory=300 * 2**20,
            include_dashboard=False,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


def tiny_bert(num_layers: int = 4, num_labels: int = 5, seed: int = 0):
    """A randomly initialised BERT classifier small enough for unit tests."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=200,
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    return BertForSequenceClassification(cfg).eval()


def tiny_gpt2(num_layers: int = 4, num_labels: int = 5, seed: int = 0):
    """A randomly initialised GPT-2 classifier (decoder) for unit tests."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=200,
        n_embd=32,
        n_layer=num_layers,
        n_head=4,
        n_positions=64,
        num_labels=num_labels,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return GPT2ForSequenceClassification(cfg).eval()


def tiny_deberta(num_layers: int = 3):
    """DeBERTa (v1): its attention owns bias parameters and takes relative-position
    embeddings, exercising the torch.func path with batched and unbatched arguments."""
    from transformers import DebertaConfig, DebertaForSequenceClassification

    torch.manual_seed(0)
    cfg = DebertaConfig(
        vocab_size=200,
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=5,
        relative_attention=True,
        pos_att_type=["c2p", "p2c"],
        max_relative_positions=16,
    )
    return DebertaForSequenceClassification(cfg).eval()


def tiny_llama(num_layers: int = 4, num_labels: int = 5, seed: int = 0):
    """A randomly initialised Llama classifier (decoder) for unit tests."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=200,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_labels=num_labels,
        pad_token_id=0,
    )
    return LlamaForSequenceClassification(cfg).eval()


def toy_batches(
    n_batches: int = 3, batch_size: int = 8, seq: int = 12, num_labels: int = 5, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Random token batches with a padded tail, for tiny models (vocab 200)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(5, 200, (batch_size, seq), generator=g)
        mask = torch.ones_like(ids)
        mask[: batch_size // 2, seq - 3 :] = 0
        ids[mask == 0] = 0
        labels = torch.randint(0, num_labels, (batch_size,), generator=g)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def inputs_per_example(model, batches: list[dict], module_of) -> list[torch.Tensor]:
    """Per BERT layer, the inputs of ``module_of(block)`` at every real token (float64,
    [tokens, in]), run one example at a time with its padding cut off, so no attention mask
    is involved: the oracle for statistics the engine gathers over masked batches."""
    seen: list[list[torch.Tensor]] = [[] for _ in model.bert.encoder.layer]
    handles = [
        module_of(blk).register_forward_hook(lambda _m, a, _o, i=i: seen[i].append(a[0][0]))
        for i, blk in enumerate(model.bert.encoder.layer)
    ]
    model.eval()
    try:
        with torch.no_grad():
            for b in batches:
                for ids, mask in zip(b["input_ids"], b["attention_mask"], strict=True):
                    n = int(mask.sum())
                    model(input_ids=ids[None, :n], attention_mask=mask[None, :n])
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(x).double() for x in seen]


def toy_arrays(seed: int, n_batches: int = 2) -> dict[str, np.ndarray]:
    """:func:`toy_batches` joined into one split of numpy arrays (what a study's splits hold)."""
    bs = toy_batches(n_batches, batch_size=8, seed=seed)
    return {k: torch.cat([b[k] for b in bs]).numpy() for k in bs[0]}


def tiny_shared_inputs(train_batches: int = 3, eval_batches: int = 2):
    """A trial's :class:`engine.trial.SharedInputs` around a 4-layer ``tiny_bert`` teacher:
    toy train/valid/test splits (seeds 0/1/2) and the teacher's train logits; no importance."""
    from engine.trial import SharedInputs

    teacher = tiny_bert(num_layers=4)
    splits = {
        "train": toy_arrays(0, train_batches),
        "valid": toy_arrays(1, eval_batches),
        "test": toy_arrays(2, eval_batches),
    }
    with torch.no_grad():
        logits = teacher(
            input_ids=torch.as_tensor(splits["train"]["input_ids"]),
            attention_mask=torch.as_tensor(splits["train"]["attention_mask"]),
        ).logits.numpy()
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    return SharedInputs(teacher.config.to_dict(), state, logits, splits, 5, {})


@pytest.fixture
def tiny_models():
    return {"bert": tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama}


# --- agreement statistics from their definitions (plain loops: no project code, no scipy) ---


def average_ranks(scores: list[float]) -> list[float]:
    """1-based ranks, highest score = 1; tied scores share the mean of the positions they
    occupy: rank_i = 1 + #{j: s_j > s_i} + #{j ≠ i: s_j = s_i} / 2."""
    return [1 + sum(t > s for t in scores) + (sum(t == s for t in scores) - 1) / 2 for s in scores]


def kendall_w_by_definition(matrix: list[list[float]]) -> float:
    """Kendall's W of m raters × n items, tie-corrected (Kendall & Babington Smith 1939):
    W = 12 S / (m² (n³ − n) − m Σ T), S = Σ_j (R_j − m (n + 1) / 2)², R_j = item j's rank sum,
    T = Σ (t³ − t) over each rater's groups of t tied items."""
    m, n = len(matrix), len(matrix[0])
    ranks = [average_ranks(list(row)) for row in matrix]
    rank_sums = [sum(r[j] for r in ranks) for j in range(n)]
    s = sum((rs - m * (n + 1) / 2) ** 2 for rs in rank_sums)
    ties = 0.0
    for row in matrix:
        for value in set(row):
            t = list(row).count(value)
            ties += t**3 - t
    return 12 * s / (m**2 * (n**3 - n) - m * ties)


def kendall_tau_b_by_definition(x: list[float], y: list[float]) -> float:
    """Kendall's τ-b over all pairs i < j: Σ sx·sy / √(Σ sx² · Σ sy²), sx = sign(x_i − x_j),
    sy = sign(y_i − y_j) (tied pairs count 0); nan when x or y is constant."""

    def sign(v: float) -> int:
        return (v > 0) - (v < 0)

    pairs = [(i, j) for i in range(len(x)) for j in range(i + 1, len(x))]
    sx = [sign(x[i] - x[j]) for i, j in pairs]
    sy = [sign(y[i] - y[j]) for i, j in pairs]
    denom = (sum(a * a for a in sx) * sum(b * b for b in sy)) ** 0.5
    return sum(a * b for a, b in zip(sx, sy, strict=True)) / denom if denom else float("nan")


class Live:
    """A report (engine.train.ProgressReport) on every step that hands ``fn(step, training)``
    the live training state it is called with, as a trial's reporter gets it."""

    every = 1

    def __init__(self, fn) -> None:
        self.fn = fn

    def measure(self, _model: torch.nn.Module) -> dict[str, float]:
        return {}

    def __call__(self, metrics: dict, training=None) -> None:
        self.fn(int(metrics["step"]), training)


def ranking_metrics_by_definition(ranks) -> dict[str, float]:
    """HR@k, NDCG@k (k = 5, 10, 20) and MRR by their definitions, one relevant item per
    user at 0-based rank r: hit = r < k, NDCG = 1/log2(r + 2) if r < k, RR = 1/(r + 1)."""
    import math

    ranks = [int(r) for r in ranks]
    out = {"mrr": sum(1 / (r + 1) for r in ranks) / len(ranks)}
    for k in (5, 10, 20):
        out[f"hr_at_{k}"] = sum(r < k for r in ranks) / len(ranks)
        out[f"ndcg_at_{k}"] = sum(1 / math.log2(r + 2) for r in ranks if r < k) / len(ranks)
    return out
