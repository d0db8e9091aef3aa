"""``cluster.yaml`` (AWS) and ``cluster-onprem.yaml`` (your machines) pass the validation ``ray up``
runs before touching a machine, call the Ray their setup installed, and their setup lines
really run: every ``setup_commands`` line that needs no root or cloud runs here, in a throwaway
home, as the file says."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FILES = ["cluster.yaml", "cluster-onprem.yaml"]
VENV_RAY = "~/compression-sweeps/.venv/bin/ray"


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / name).read_text())


def test_cluster_yaml_is_accepted_by_ray_up_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load("cluster.yaml")
    cfg = prepare_config(raw)
    validate_config(cfg)  # raises on unknown keys or a bad head_node_type
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the head runs no trials
    assert all(
        "ImageId" in t["node_config"] for t in cfg["available_node_types"].values()
    )  # without it Ray falls back to a very old AMI
    mounts = cfg["file_mounts"]
    assert "." in mounts.values()  # the repo (embedded data + code) reaches every node


def test_onprem_yaml_is_accepted_by_ray_up_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load("cluster-onprem.yaml")
    assert "available_node_types" not in raw  # the local provider rejects them
    cfg = prepare_config(raw)
    validate_config(cfg)
    (node_type,) = cfg["available_node_types"].values()  # Ray's one on-prem type
    assert node_type["max_workers"] == len(raw["provider"]["worker_ips"])
    assert "." in cfg["file_mounts"].values()


@pytest.mark.parametrize("name", FILES)
def test_start_and_stop_lines_call_the_venvs_ray(name: str) -> None:
    cfg = load(name)
    lines = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    rays = [w for line in lines for w in shlex.split(line) if w == "ray" or w.endswith("/ray")]
    # a bare `ray` is whatever PATH finds on the node (maybe none, maybe another version)
    assert rays and set(rays) == {VENV_RAY}, rays
    assert any(" stop" in line for line in cfg["head_start_ray_commands"])
    assert any(" stop" in line for line in cfg["worker_start_ray_commands"])


def test_the_head_runs_no_trials_and_gpu_types_state_their_gpus() -> None:
    aws = load("cluster.yaml")
    types = aws["available_node_types"]
    assert types[aws["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = {k: t for k, t in types.items() if t["node_config"]["InstanceType"][0] in "gp"}
    assert gpu, "no GPU worker type"
    for t in gpu.values():
        # A whole GPU per node that trials asking resources.gpus=0.25 share four at a time,
        # on an image with the NVIDIA driver.
        assert t["resources"]["GPU"] >= 1 and t["resources"]["CPU"] >= 4
        assert "nvidia-driver" in t["node_config"]["ImageId"]
    onprem_head = " ".join(load("cluster-onprem.yaml")["head_start_ray_commands"])
    assert "--num-cpus=0" in onprem_head and "--num-gpus=0" in onprem_head


def test_autoscaler_and_dashboard_needs_are_installed() -> None:
    aws = load("cluster.yaml")
    # the AWS autoscaler runs in the head's Ray, i.e. the venv's Python: boto3 goes there
    assert any(
        line.startswith("~/compression-sweeps/.venv/bin/python -m pip install") and "boto3" in line
        for line in aws["head_setup_commands"]
    )
    # the dashboard (job submission) needs ray[default] on every node: a project dependency
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray_dep,) = [d for d in deps if d.startswith("ray[")]
    assert "default" in ray_dep.split("[", 1)[1].split("]")[0].split(",")


@pytest.mark.parametrize("name", FILES)
def test_results_go_to_storage_that_outlives_the_cluster(name: str) -> None:
    lines = load(name)["setup_commands"]
    (mount,) = [line for line in lines if "mount -t nfs" in line]
    assert mount.rstrip("'").endswith("/mnt/sweeps; chown ubuntu:ubuntu /mnt/sweeps")


def test_onprem_setup_matches_the_aws_setup_but_for_the_storage_server() -> None:
    aws, onprem = (
        load("cluster.yaml")["setup_commands"],
        load("cluster-onprem.yaml")["setup_commands"],
    )
    same = [line for line in aws if "mount -t nfs" not in line]
    assert same == [line for line in onprem if "mount -t nfs" not in line]


def _copy_mount(dest: Path, excludes: list[str]) -> None:
    """What ``file_mounts: {"~/compression-sweeps": "."}`` puts on a node: the repository less
    ``rsync_exclude`` (and git's own folder)."""
    names = {e for e in excludes if "/" not in e and "*" not in e} | {".git"}
    shutil.copytree(
        REPO,
        dest,
        ignore=shutil.ignore_patterns(*names, "__pycache__", ".ruff_cache", ".pytest_cache"),
        symlinks=True,
    )


@pytest.mark.slow
def test_setup_commands_run_in_a_throwaway_home(tmp_path: Path) -> None:
    """Every line of ``cluster.yaml``'s ``setup_commands`` and ``head_setup_commands`` runs
    here, verbatim, with ``HOME`` a fresh directory holding the file mount: the venv line
    builds the project's venv with the file's ``TORCH_SPEC`` (torch 2.13.0 from this machine's
    disk), the head line installs boto3 into it. Lines that need root on the node (``sudo``:
    the OS packages, the NFS mount) are not run, except that the storage line is run up to its
    guard, which must refuse the placeholder server with one line naming the file."""
    cfg = load("cluster.yaml")
    home = tmp_path / "home"
    _copy_mount(home / "compression-sweeps", cfg["rsync_exclude"])
    shim = tmp_path / "bin"
    shim.mkdir()
    # `sudo CMD` runs CMD unprivileged here: only the storage guard is run through it
    (shim / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    (shim / "sudo").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(HOME=str(home), PATH=f"{shim}:{env['PATH']}")

    lines = cfg["setup_commands"] + cfg["head_setup_commands"]
    root_only = [line for line in lines if line.startswith("sudo ")]
    (storage,) = [line for line in root_only if "mount -t nfs" in line]
    (packages,) = [line for line in root_only if line != storage]
    # the OS packages: apt-get and nothing else
    assert [p.split()[:2] for p in packages.split("&&")] == [["sudo", "apt-get"]] * 2
    guard = subprocess.run(
        ["bash", "-c", storage], env=env, capture_output=True, text=True, timeout=60
    )
    assert guard.returncode == 2 and "cluster.yaml" in guard.stderr, guard.stderr
    assert not Path("/mnt/sweeps").is_mount()

    timings = {}
    for line in lines:
        if line in root_only:
            continue
        t0 = time.perf_counter()
        ran = subprocess.run(
            ["bash", "-c", line], env=env, capture_output=True, text=True, timeout=1500
        )
        timings[line[:40]] = round(time.perf_counter() - t0)
        assert ran.returncode == 0, f"{line}\n{ran.stdout[-2000:]}\n{ran.stderr[-3000:]}"
    print(f"[setup] seconds per line: {timings}")

    venv = home / "compression-sweeps" / ".venv"
    check = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import boto3, aiohttp, torch, engine.sweep, ray; print(torch.__version__)",
        ],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert check.stdout.split()[-1].startswith("2.13.0")
    # the binary every start/stop line calls exists and runs
    ray = Path(VENV_RAY.replace("~", str(home)))
    version = subprocess.run([str(ray), "--version"], env=env, capture_output=True, text=True)
    assert version.returncode == 0 and "2." in version.stdout, version.stderr
