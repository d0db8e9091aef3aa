"""Several Ray nodes, through the real CLI: a study on a ``ray.cluster_utils.Cluster`` whose head
runs nothing (``num_cpus=0``, like ``cluster.yaml``) and two worker nodes, and the same study
with a worker node lost while a trial runs on it. Both share one cluster; the node-loss test
comes last.

The first test is also the suite's determinism test: the session's smoke run (one node, a cold
cache) and the same command on the cluster (another cold cache) give bit-identical results,
students, teacher and importance scores.

The CLI joins the cluster with ``--address`` in a subprocess; this process owns the cluster, so
the chaos (``remove_node``) comes from here, timed by the run directory's attempts ledger
(``trials/<id>.attempts.jsonl``: the node each trial attempt runs on, written when it starts).
The cluster keeps its files under its own ``temp_dir``; every process under it is ended by pid
at the end (never ``ray stop``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from engine.tasks import get_task
from tests.conftest import REPO, SMOKE_RUN, cli_env, run_sweep
from tests.processes import alive_under, kill_all

pytestmark = pytest.mark.cluster

STORE = 200 * 2**20  # object store per node: the shared inputs (teacher ~90 MB) fit the head's
# Ray Data's own coordination actors and the engine's progress counter (engine/progress.py)
# ask for no CPU, so Ray may place them on the head; everything that computes (data tasks,
# teacher, importance, trials, latency) may not
BOOKKEEPING = (
    "_StepCounter.",
    "_StatsActor.",
    "_AutoscalingCoordinatorActor.",
    "ActorLocationTracker.",
    "_UsageCollectionActor.",
)
TASK = "rating_classification"  # the smoke study's
# compared between the cluster run and the single-node run: everything a trial's result is,
# as opposed to how long it took or how much memory it used (times and memory peaks are
# measurements of the machine)
SAME = [
    *get_task(TASK).metrics,
    *(f"valid_{m}" for m in get_task(TASK).metrics),
    "gflops",
    "gflops_theoretical",
    "params",
    "params_nonzero",
    "weights_bytes",
    "student_layers",
    "kept_layers",
    "status",
]
KEY = ["config_id", "seed"]


class Nodes:
    """A ``Cluster``: a head with no CPUs (it runs only the drivers) and worker nodes."""

    def __init__(self, workers: int, temp_dir: Path) -> None:
        from ray.cluster_utils import Cluster

        self.temp_dir = temp_dir
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "temp_dir": str(temp_dir),
                "object_store_memory": STORE,
                "include_dashboard": True,  # the state API (list_tasks) needs it
                "dashboard_port": 0,
            },
        )
        self.workers = [
            self.cluster.add_node(num_cpus=1, object_store_memory=STORE) for _ in range(workers)
        ]
        self.cluster.wait_for_nodes()

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def head_id(self) -> str:
        return self.cluster.head_node.node_id

    @property
    def worker_ids(self) -> set[str]:
        return {w.node_id for w in self.workers}


@pytest.fixture(scope="module")
def nodes() -> Iterator[Nodes]:
    """One cluster for the module: a head and two worker nodes. The node-loss test, last in
    the file, removes a worker node, so it runs after the test that needs both."""
    temp_dir = Path(tempfile.gettempdir()) / f"mn{uuid.uuid4().hex[:8]}"
    made = None
    try:
        made = Nodes(2, temp_dir)
        yield made
    finally:
        if made is not None:
            made.cluster.shutdown()
        kill_all(str(temp_dir))
    assert not alive_under(str(temp_dir))


def _study(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout[-3000:] + result.stderr[-3000:]


def _trials(out: Path) -> pd.DataFrame:
    df = pd.read_parquet(out / "results.parquet")
    return df[(df.trial_id != "teacher") & (df.status != "reference")]


def _work_by_node(address: str) -> dict[str, set[str]]:
    """Ray's state API: the name of every task and actor task the cluster ran → the nodes."""
    from ray.util.state import list_tasks

    where: dict[str, set[str]] = {}
    for t in list_tasks(address=address, limit=10_000, raise_on_missing_output=False):
        if t.type in ("NORMAL_TASK", "ACTOR_CREATION_TASK", "ACTOR_TASK") and t.node_id:
            where.setdefault(t.name, set()).add(t.node_id)
    return where


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's preparation cache: cold for the first test (which checks that the data
    tasks, the teacher's fine-tuning and the importance actors ran on worker nodes, and that
    they computed what one node computes), so the node-loss test after it finds the smoke
    study's data, teacher and importance cached (it tests retries, not preparation)."""
    return tmp_path_factory.mktemp("multinode-cache")


def test_study_runs_on_worker_nodes_and_matches_one_node(
    nodes: Nodes,
    tmp_path: Path,
    cache: Path,
    smoke_run: tuple[Path, subprocess.CompletedProcess[str]],
    smoke_cache: Path,
) -> None:
    """The session's smoke run (``conftest.SMOKE_RUN``: one node, a cold cache) again on the
    cluster from a cold cache: preparation and trials on the worker nodes only, and every
    figure they compute the same as on one node, bit for bit (this is also the suite's
    determinism test: same seeds twice, two cold caches, identical results)."""
    out = tmp_path / "cluster"
    assert not any(cache.iterdir()), "the first test of the module needs a cold cache"
    env = cli_env(cache, PYTHONPATH=str(REPO))
    t0 = time.monotonic()
    ran = run_sweep(*SMOKE_RUN, "--no-report", "--address", nodes.address, out=out, env=env)
    assert ran.returncode == 0, _study(ran)
    cluster_s = time.monotonic() - t0
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["teacher"]["cached"]  # everything prepared here, on the cluster
    assert not manifest["cache"]["data"]["cached"] and not manifest["cache"]["importance"]["cached"]

    # what the engine records: each trial's node is a worker, one attempt, no retry
    trials = _trials(out)
    assert len(trials) == 4 and (trials.status == "ok").all(), trials.error.tolist()
    assert set(trials.node_id) <= nodes.worker_ids
    assert (trials.node_history == trials.node_id).all()
    assert (trials.attempts == 1).all() and (trials.retries == 0).all()
    for tid, node in zip(trials.trial_id, trials.node_id, strict=True):
        lines = (out / "trials" / f"{tid}.attempts.jsonl").read_text().splitlines()
        assert [json.loads(x)["node_id"] for x in lines] == [node]

    # what Ray saw: data tasks, the teacher's fine-tuning and measurement, the importance
    # actors, the trials and the latency phase all ran, and only on the worker nodes
    work = _work_by_node(nodes.address)
    (tmp_path / "work.json").write_text(json.dumps({k: sorted(v) for k, v in work.items()}))
    for name in ("finetune", "measure", "ImportanceWorker.score", "phase_task"):
        assert name in work, sorted(work)
    assert any(n.startswith(("ReadRange", "MapBatches", "Map(", "_split_block")) for n in work)
    on_head = {name for name, where in work.items() if nodes.head_id in where}
    computed_on_head = sorted(name for name in on_head if not name.startswith(BOOKKEEPING))
    assert not computed_on_head, computed_on_head
    trial_nodes = {n for name, where in work.items() if "run_trial" in name for n in where}
    assert set(trials.node_id) <= trial_nodes  # the column names the node Ray ran it on
    assert manifest["latency"]["timed"] == 5  # the teacher and the students, on a worker node

    # Determinism (issue 17): the same study on one node, prepared there from a cold cache of
    # its own (the session's smoke run), gives the same results per configuration × seed, bit
    # for bit: every quality and cost figure, the saved students, the teacher (weights and
    # train logits) and the importance scores. A different node, process and cache change
    # nothing. At this size every student may predict the majority class, so equal metrics
    # alone would prove little: the weights and logits are the sensitive check.
    local, _ = smoke_run
    first = json.loads((local / "manifest.json").read_text())
    assert not first["teacher"]["cached"] and not first["cache"]["importance"]["cached"]
    assert manifest["teacher"] == first["teacher"]
    a, b = (_rows(run).set_index(KEY).sort_index() for run in (out, local))
    assert len(a) == 2 * 2 + 1  # 2 configurations × 2 seeds, and the majority-class row
    assert a.index.equals(b.index)
    cols = [c for c in SAME if c in a]
    assert {"accuracy", "macro_f1", "gflops", "params_nonzero"} <= set(cols)
    pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=True)
    teacher_a, teacher_b = (_rows(run, teacher=True) for run in (out, local))
    teacher_cols = [c for c in SAME if c in teacher_a]
    pd.testing.assert_frame_equal(teacher_a[teacher_cols], teacher_b[teacher_cols])
    imp_a = pd.read_parquet(out / "importance.parquet")
    imp_b = pd.read_parquet(local / "importance.parquet")
    pd.testing.assert_frame_equal(imp_a, imp_b, check_exact=True)
    # the trained students themselves: every weight bit-equal
    students = a[a.status == "ok"]
    assert len(students) == 4
    for which, row in students.iterrows():
        here, there = _weights(row.model_dir), _weights(b.loc[which, "model_dir"])
        assert here.keys() == there.keys()
        for name, tensor in here.items():
            assert torch.equal(tensor, there[name]), (which, name)
    # ... and the seed matters: a configuration's two seeds train different students (so
    # equal weights across the runs are not equal by accident)
    for _, pair in students.groupby(level="config_id"):
        w0, w1 = (_weights(d) for d in pair.model_dir)
        assert any(not w0[n].equal(w1[n]) for n in w0), "seed does not reach the training"
    # the teacher, fine-tuned once in each run's cache: weights and train logits, bit for bit
    key = manifest["teacher"]["cache_key"]
    dirs = (cache / "teachers" / key, smoke_cache / "teachers" / key)
    sa, sb = (load_file(d / "state_dict.safetensors") for d in dirs)
    assert sa.keys() == sb.keys() and all(sa[n].equal(sb[n]) for n in sa)
    la, lb = (np.load(d / "train_logits.npy") for d in dirs)
    assert la.std() > 0 and np.array_equal(la, lb)
    print(f"cluster run {cluster_s:.0f} s", file=sys.stderr)


def _rows(run: Path, *, teacher: bool = False) -> pd.DataFrame:
    """A run's result rows: the trials and the reference rows, or the teacher's alone."""
    df = pd.read_parquet(run / "results.parquet")
    return df[(df.trial_id == "teacher") == teacher].set_index("trial_id", drop=False)


def _weights(model_dir: str) -> dict[str, torch.Tensor]:
    return load_file(Path(model_dir) / "model.safetensors")


# Long enough to be caught mid-training: 40 distillation steps, reporting every 2 and
# checkpointing every 4, so a trial retried on another node continues from its checkpoint.
LOSS = [
    "pipeline.distill.epochs=20",
    "pipeline.distill.max_steps=40",
    "search.report_every_steps=2",
    "search.checkpoint_every=4",
    "search.max_failures=3",
]


def _checkpointed_trial_on(out: Path, nodes: set[str]) -> tuple[str, str] | None:
    """A trial still running on one of ``nodes`` (its first attempt, per the attempts ledger)
    that Tune has recorded a checkpoint for (a result row naming one): (trial id, node id)."""
    for f in sorted((out / "trials").glob("*.attempts.jsonl")):
        tid = f.name.split(".")[0]
        lines = f.read_text().splitlines()
        if len(lines) != 1 or (out / "trials" / f"{tid}.json").exists():
            continue
        node = json.loads(lines[0])["node_id"]
        for result in (out / "tune").glob(f"run_trial_{tid}_*/result.json"):
            rows = [json.loads(x) for x in result.read_text().splitlines() if x.endswith("}")]
            if node in nodes and any(r.get("checkpoint_dir_name") for r in rows):
                return tid, node
    return None


def test_node_lost_mid_trial_is_retried_elsewhere(
    nodes: Nodes, tmp_path: Path, cache: Path
) -> None:
    out = tmp_path / "run"
    env = cli_env(cache, PYTHONPATH=str(REPO))
    cli = [sys.executable, "-m", "engine.sweep", "smoke", *LOSS, "--no-report"]
    cli += ["--address", nodes.address, "--out", str(out)]
    log = tmp_path / "cli.log"
    with log.open("w") as sink:
        driver = subprocess.Popen(cli, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            victim = None
            deadline = time.monotonic() + 600
            while victim is None and driver.poll() is None and time.monotonic() < deadline:
                victim = _checkpointed_trial_on(out, nodes.worker_ids)
                time.sleep(0.2)
            assert victim is not None, log.read_text()[-3000:]
            trial_id, lost = victim
            (node,) = [w for w in nodes.workers if w.node_id == lost]
            nodes.cluster.remove_node(node, allow_graceful=False)  # no replacement node
            assert driver.wait(timeout=600) == 0, log.read_text()[-3000:]
        finally:
            if driver.poll() is None:
                driver.kill()
    survivors = nodes.worker_ids - {lost}

    trials = _trials(out).set_index("trial_id")
    # every trial finished, each configuration × seed exactly once
    assert (trials.status == "ok").all(), trials.error.tolist()
    pairs = list(zip(trials["pipeline.truncate.strategy"], trials.seed, strict=True))
    assert sorted(pairs) == [("fisher", 0), ("uniform", 0)]
    # the lost trial: Tune retried it; its second attempt ran on a surviving node and
    # continued from its checkpoint (a resumed step > 0), not from scratch
    hit = trials.loc[trial_id]
    assert hit.retries >= 1
    assert hit.attempts == hit.retries + 1
    history = hit.node_history.split(",")
    assert history[0] == lost and hit.node_id == history[-1] in survivors
    assert hit.resumed_stage == "distill" and hit.resumed_step > 0
    # the run directory says which trials were retried and where: only those that ran on the
    # lost node, and every attempt is in the ledger
    for tid, row in trials.iterrows():
        lines = (out / "trials" / f"{tid}.attempts.jsonl").read_text().splitlines()
        assert [json.loads(x)["node_id"] for x in lines] == row.node_history.split(",")
        assert row.attempts == row.retries + 1
        assert (row.retries > 0) == (lost in row.node_history.split(",")[:-1])
    assert set(trials.node_id) <= survivors | {lost}
