"""Several Ray nodes, through the real CLI: a study on a ``ray.cluster_utils.Cluster`` whose head
runs nothing (``num_cpus=0``, like ``cluster.yaml``) and two worker nodes, and the same study
with a worker node lost while a trial runs on it.

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

import pandas as pd
import pytest
import torch

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
# compared between the cluster run and the single-node run: every quality and cost figure a
# trial computes (latency is a timing, not a deterministic result)
COMPARED = [
    "accuracy",
    "macro_f1",
    "valid_accuracy",
    "valid_macro_f1",
    "gflops",
    "params",
    "weights_bytes",
    "student_layers",
    "kept_layers",
]


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


@pytest.fixture
def nodes(request: pytest.FixtureRequest) -> Iterator[Nodes]:
    temp_dir = Path(tempfile.gettempdir()) / f"mn{uuid.uuid4().hex[:8]}"
    made = None
    try:
        made = Nodes(request.param, temp_dir)
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


@pytest.mark.parametrize("nodes", [2], indirect=True)
def test_study_runs_on_worker_nodes_and_matches_one_node(
    nodes: Nodes,
    tmp_path: Path,
    cache: Path,
    smoke_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """The session's smoke run (``conftest.SMOKE_RUN``: one node, a cold cache) again on the
    cluster from a cold cache: preparation and trials on the worker nodes only, and every
    figure they compute the same as on one node, bit for bit."""
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

    # the same study on one node, prepared there from a cold cache (the session's smoke run):
    # the teacher, the importance and the trials' numbers are the same, bit for bit (a
    # different node and process change nothing)
    local, _ = smoke_run
    assert manifest["teacher"] == json.loads((local / "manifest.json").read_text())["teacher"]
    key = ["pipeline.truncate.strategy", "seed"]
    a_t = trials.set_index(key)[COMPARED].sort_index()
    b_t = _trials(local).set_index(key)[COMPARED].sort_index()
    pd.testing.assert_frame_equal(a_t, b_t, check_exact=True)
    imp_a = pd.read_parquet(out / "importance.parquet")
    imp_b = pd.read_parquet(local / "importance.parquet")
    pd.testing.assert_frame_equal(imp_a, imp_b, check_exact=True)
    # the trained students themselves: every weight bit-equal (the most sensitive check:
    # the tiny students' test predictions may all be one class)
    for which in a_t.index:
        here, there = (_saved_student(run, key, which) for run in (out, local))
        assert here.keys() == there.keys()
        for name, tensor in here.items():
            assert torch.equal(tensor, there[name]), (which, name)
    print(f"cluster run {cluster_s:.0f} s", file=sys.stderr)


def _saved_student(run: Path, key: list[str], value: tuple) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (model_dir,) = _trials(run).set_index(key).loc[[value], "model_dir"]
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


@pytest.mark.parametrize("nodes", [2], indirect=True)
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
