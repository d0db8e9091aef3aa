"""``ray job submit`` runs a study on a running cluster, and its run directory comes back.

A head with the dashboard (its own ports and ``--temp-dir``) stands in for a cluster's head.
The job uploads the repository (``--working-dir``, with ``.venv``, ``.cache`` and ``reports``
left out), runs the real CLI with the virtualenv's Python named explicitly (a job runs its
entrypoint in a shell on the node, where ``python`` is whatever ``PATH`` finds), and writes its
run directory to ``--out`` on storage the submitter can read (here a local directory; on a
cluster the EFS mount of ``cluster.yaml``); ``ray job logs`` names it. Token auth is off for
the test (``RAY_AUTH_MODE=disabled``); the README says what a real cluster does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from tests.conftest import REPO, cli_env
from tests.processes import free_port
from tests.test_autoscaler import end_head, head_ports

pytestmark = pytest.mark.cluster

RAY = Path(sys.executable).parent / "ray"
EXCLUDES = [".venv", ".cache", "reports", ".git", "**/__pycache__", ".ruff_cache"]


def ray_cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RAY), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_job_submit_runs_the_study_and_returns_its_run_directory(
    tmp_path: Path, smoke_cache: Path
) -> None:
    temp_dir = Path(tempfile.gettempdir()) / f"as-job-{uuid.uuid4().hex[:8]}"
    port, dash = free_port(), free_port()
    env = cli_env()  # RAY_AUTH_MODE=disabled
    head = [
        str(RAY),
        "start",
        "--head",
        f"--port={port}",
        f"--dashboard-port={dash}",
        "--include-dashboard=true",
        *head_ports(),
        f"--temp-dir={temp_dir}",
        "--num-cpus=2",
        f"--object-store-memory={300 * 2**20}",
        "--disable-usage-stats",
    ]
    address = f"http://127.0.0.1:{dash}"
    out = tmp_path / "run"
    job_id = f"as-smoke-{uuid.uuid4().hex[:8]}"
    runtime_env = {
        "excludes": EXCLUDES,
        # the smoke study's teacher and importance, cached (its data: the files are read from
        # the uploaded copy, whose paths the data cache's key names)
        "env_vars": {"COMPRESSION_SWEEPS_CACHE": str(smoke_cache)},
    }
    submit = [
        "job",
        "submit",
        "--address",
        address,
        "--submission-id",
        job_id,
        "--no-wait",
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        sys.executable,  # the venv's Python, by its path
        "-m",
        "engine.sweep",
        "smoke",
        "--address",
        "auto",  # the job's RAY_ADDRESS: this cluster, not a new local Ray
        "--no-report",
        "--out",
        str(out),
    ]
    try:
        subprocess.run(head, env=env, check=True, capture_output=True, timeout=180)
        deadline = time.monotonic() + 120
        while True:  # the node's dashboard agent takes a moment to accept jobs
            sent = ray_cli(*submit, env=env)
            if sent.returncode == 0 or time.monotonic() > deadline:
                break
            assert "No available agent" in sent.stderr, sent.stderr[-2000:]
            time.sleep(3)
        assert sent.returncode == 0, sent.stdout[-2000:] + sent.stderr[-2000:]

        logs = ray_cli(
            "job", "logs", "--address", address, "--follow", job_id, env=env, timeout=1500
        )
        status = JobSubmissionClient(address).get_job_status(job_id)
        assert status == JobStatus.SUCCEEDED, logs.stdout[-4000:]
        assert f"Run directory: {out}" in logs.stdout  # the log names the run directory

        # The run directory is on storage the submitter reads: the study's files are here.
        df = pd.read_parquet(out / "results.parquet")
        trials = df[~df.trial_id.isin(["teacher", "majority"])]
        assert len(trials) == 2 and (trials.status == "ok").all(), trials.get("error")
        manifest = json.loads((out / "manifest.json").read_text())
        # The code that ran is the uploaded copy of the working dir, not this checkout ...
        script = Path(manifest["command"][0])
        assert script.name == "sweep.py"
        assert "working_dir_files" in script.parts and temp_dir in script.parents
        # ... which holds the repository without the excluded folders.
        package = script.parents[1]
        assert (package / "sweeps" / "smoke.yaml").is_file()
        assert (package / "datasets").is_dir()
        assert not any((package / name).exists() for name in (".venv", ".cache", "reports"))
    finally:
        left = end_head(temp_dir, port)
    assert not left
