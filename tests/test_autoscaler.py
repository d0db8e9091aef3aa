"""The Ray autoscaler scales a real study: a head with no CPUs and no workers, Ray's fake
multi-node provider (each "node" a raylet of its own on this machine), the node types taken
from ``cluster.yaml``. The smoke study (the real CLI, ``--address``) makes the autoscaler launch
workers of the declared CPU type, completes, and the idle workers are removed afterwards.

The head is started here with ``ray start --head --autoscaling-config`` (its own port and
``--temp-dir``), not with ``ray.cluster_utils.AutoscalingCluster.start()``, which runs
``ray stop --force`` and would end every Ray on the machine. The fake nodes are started by the
head's autoscaler and live under the same temp dir, so the test ends what it started — and only
that — by matching the temp dir.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, cli_env
from tests.processes import alive_under, free_port, kill_all, procs_under

pytestmark = pytest.mark.cluster

RAY = Path(sys.executable).parent / "ray"
# The fake provider names the head's type itself (FAKE_HEAD_NODE_TYPE).
FAKE_HEAD_TYPE = "ray.head.default"
# cluster.yaml's instances have 8 vCPUs; on a 2-core machine a fake node gets 8 ÷ 8 = 1 CPU.
CPU_SCALE = 8
WORKER_OBJECT_STORE = 150 * 2**20
IDLE_TIMEOUT_MIN = 0.2  # workers idle for 12 s are removed
# the study took 7 min here at load ~30 and over 8 min at load ~50 (other jobs on the machine)
STUDY_LIMIT_S = 1200


def head_ports() -> list[str]:
    """``ray start --head`` options that keep a test's head off the ports other Rays on this
    machine hold by default (the dashboard agent's 52365, the client server's 10001)."""
    return [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
    ]


def head_processes(temp_dir: Path, port: int) -> list[int]:
    """Every process of the head started on ``port`` with ``temp_dir``, and their children: the
    node's processes name the temp dir; the Ray client server names only the GCS address (and
    outlives ``ray start``, its parent)."""
    return procs_under(str(temp_dir), f":{port} --host=")


def end_head(temp_dir: Path, port: int) -> list[int]:
    """SIGKILL what :func:`head_processes` finds; return those still alive after up to 30 s."""
    markers = (str(temp_dir), f":{port} --host=")
    kill_all(*markers)
    return alive_under(*markers)


def fake_node_types(cluster: dict[str, Any]) -> dict[str, Any]:
    """``cluster.yaml``'s ``available_node_types`` scaled down for the fake provider: CPU
    counts ÷ 8 (at least 1), GPU types keep their GPU count as a *logical* GPU (no device
    behind it), min/max workers as declared; the head keeps its resources under the fake
    provider's head type."""
    types: dict[str, Any] = {}
    for name, spec in cluster["available_node_types"].items():
        res = dict(spec.get("resources") or {})
        if name == cluster["head_node_type"]:
            types[FAKE_HEAD_TYPE] = {"resources": res, "node_config": {}, "max_workers": 0}
            continue
        assert "CPU" in res, f"cluster.yaml: {name} must state its CPUs (the test scales them)"
        scaled: dict[str, Any] = {"CPU": max(1, int(res["CPU"]) // CPU_SCALE)}
        if res.get("GPU"):
            scaled["GPU"] = int(res["GPU"])
        scaled["object_store_memory"] = WORKER_OBJECT_STORE
        types[name] = {
            "resources": scaled,
            "node_config": {},
            "min_workers": spec.get("min_workers", 0),
            "max_workers": spec["max_workers"],
        }
    return types


def fake_autoscaling_config(cluster: dict[str, Any], gcs_address: str) -> dict[str, Any]:
    """An autoscaling config for ``provider: {type: fake_multinode}`` (the keys of Ray's own
    ``fake_multi_node/example.yaml``, which the wheel does not ship) with ``cluster.yaml``'s
    node types and worker limit."""
    return {
        "cluster_name": "as-fake",
        "max_workers": cluster["max_workers"],
        "upscaling_speed": cluster.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,  # else the provider assumes port 6379
        },
        "auth": {},
        "docker": {},
        "available_node_types": fake_node_types(cluster),
        "head_node_type": FAKE_HEAD_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def active_nodes(address: str, env: dict[str, str]) -> dict[str, int]:
    """Node type → count of active nodes, as ``ray status`` reports them."""
    out = subprocess.run(
        [str(RAY), "status", "--address", address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    block = out.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
    return {m[2]: int(m[1]) for m in re.finditer(r"^\s*(\d+)\s+(\S+)\s*$", block, re.M)}


def test_cluster_yaml_node_types_derive_to_a_valid_fake_config() -> None:
    from ray.autoscaler._private.util import validate_config

    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    cfg = fake_autoscaling_config(cluster, "127.0.0.1:6379")
    # Ray's schema check (prepare_config would merge the provider's defaults file, which the
    # wheel does not ship for the fake provider: the config here is complete on its own)
    validate_config(cfg)
    types = cfg["available_node_types"]
    assert types[FAKE_HEAD_TYPE]["resources"] == {"CPU": 0}
    assert types["cpu_worker"]["resources"]["CPU"] == 1  # 8 vCPUs ÷ 8
    assert types["gpu_worker"]["resources"]["GPU"] == 1  # a logical GPU
    assert set(types) - {FAKE_HEAD_TYPE} == set(cluster["available_node_types"]) - {
        cluster["head_node_type"]
    }


def test_smoke_study_scales_workers_up_then_down(tmp_path: Path, smoke_cache: Path) -> None:
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    head_res = cluster["available_node_types"][cluster["head_node_type"]]["resources"]
    temp_dir = Path(tempfile.gettempdir()) / f"as-{uuid.uuid4().hex[:8]}"
    port = free_port()
    address = f"127.0.0.1:{port}"
    config = tmp_path / "autoscaling.yaml"
    config.write_text(yaml.safe_dump(fake_autoscaling_config(cluster, address)))
    # Fake nodes are started by the head's autoscaler and inherit its environment: the
    # worktree's code (PYTHONPATH) and the test's cache reach every node.
    env = cli_env(smoke_cache, PYTHONPATH=str(REPO))  # the smoke study's preparation, cached
    head_env = {**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    head = [
        str(RAY),
        "start",
        "--head",
        f"--port={port}",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={int(head_res.get('CPU', 0))}",
        f"--num-gpus={int(head_res.get('GPU', 0))}",
        f"--autoscaling-config={config}",
        "--include-dashboard=false",
        *head_ports(),
        f"--object-store-memory={300 * 2**20}",
        "--disable-usage-stats",
    ]
    out = tmp_path / "run"
    cli = [sys.executable, "-m", "engine.sweep", "smoke", "--no-report", "--address", address]
    cli += ["--out", str(out)]
    t0 = time.monotonic()
    try:
        subprocess.run(head, env=head_env, check=True, capture_output=True, timeout=180)
        assert active_nodes(address, env) == {FAKE_HEAD_TYPE: 1}  # no workers yet

        log = (tmp_path / "study.log").open("w")
        study = subprocess.Popen(cli, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak: dict[str, int] = {}
        while study.poll() is None and time.monotonic() - t0 < STUDY_LIMIT_S:
            for kind, n in active_nodes(address, env).items():
                peak[kind] = max(peak.get(kind, 0), n)
            time.sleep(2)
        if study.poll() is None:
            study.kill()
        study.wait(timeout=60)
        log.close()
        text = (tmp_path / "study.log").read_text()
        assert study.returncode == 0, text[-4000:]
        t_study = time.monotonic() - t0

        # The autoscaler launched workers of the declared CPU type for a CPU-only study, and
        # none of the GPU type (it keeps GPU nodes for GPU demand).
        assert peak.get("cpu_worker", 0) >= 1, peak
        assert peak.get("gpu_worker", 0) == 0, peak
        assert set(peak) <= {FAKE_HEAD_TYPE, *cluster["available_node_types"]}
        df = pd.read_parquet(out / "results.parquet")
        trials = df[~df.trial_id.isin(["teacher", "majority"])]
        assert len(trials) == 2 and (trials.status == "ok").all(), trials.get("error")

        # Idle workers are removed (idle_timeout_minutes) once the study is over.
        deadline = time.monotonic() + 150
        nodes = active_nodes(address, env)
        while nodes != {FAKE_HEAD_TYPE: 1} and time.monotonic() < deadline:
            time.sleep(3)
            nodes = active_nodes(address, env)
        assert nodes == {FAKE_HEAD_TYPE: 1}, nodes
        print(
            f"[autoscaler] peak {peak}; study {t_study:.0f} s; "
            f"all workers gone {time.monotonic() - t0 - t_study:.0f} s after it"
        )
    finally:
        left = end_head(temp_dir, port)
    assert not left
