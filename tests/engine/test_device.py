"""Device and precision choice (``engine.device``): the device follows the GPU Ray assigned,
precision ``auto`` means bf16 only where the hardware has it; with a real local Ray and
logical GPUs, importance actors share or spread over GPUs as ``gpus_per_actor`` says."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from engine.config import ConfigError, load_study
from engine.device import (
    autocast_dtype,
    choose_device,
    is_out_of_memory,
    precision_name,
    ray_gpu_ids,
    worker_device,
)
from tests.conftest import cli_env

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("gpus", "assigned", "cuda", "visible", "expected"),
    [
        (0.0, ["0"], True, "0", "cpu"),  # no GPU asked for: CPU even where one exists
        (0.25, ["0"], False, "0", "cpu"),  # no CUDA in this process
        (0.25, None, True, None, "cuda"),  # outside Ray: the current CUDA device
        (0.25, [], True, "", "cpu"),  # a Ray worker given no GPU
        (1.0, ["1"], True, "1", "cuda:0"),  # Ray narrowed CUDA_VISIBLE_DEVICES to its GPU
        (1.0, ["1"], True, "0,1", "cuda:1"),  # several visible: its position among them
        (0.5, ["3"], True, None, "cuda:3"),  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES
        (2.0, ["2", "5"], True, "2,5", "cuda:0"),  # several GPUs: the engine uses the first
    ],
)
def test_choose_device_follows_the_assigned_gpu(gpus, assigned, cuda, visible, expected) -> None:
    got = choose_device(gpus, assigned, cuda_available=cuda, visible=visible)
    assert got == torch.device(expected)


def test_outside_ray_there_are_no_assigned_ids_and_no_gpu_here() -> None:
    assert ray_gpu_ids() is None
    if not torch.cuda.is_available():
        assert worker_device(1.0) == CPU


def test_precision_auto_is_bf16_only_where_the_device_has_it() -> None:
    assert autocast_dtype("fp32", torch.device("cuda")) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16
    assert autocast_dtype("auto", CPU) is None
    if torch.cuda.is_available():
        want = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        assert autocast_dtype("auto", torch.device("cuda")) is want
    assert [precision_name(d) for d in (None, torch.bfloat16, torch.float16)] == [
        "fp32",
        "bf16",
        "float16",
    ]


def test_out_of_memory_errors_are_recognised() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_out_of_memory(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED: out of memory"))
    assert not is_out_of_memory(RuntimeError("size mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_precision_is_a_validated_study_key() -> None:
    assert load_study("smoke").resources.precision == "auto"
    assert load_study("smoke", ["resources.precision=bf16"]).resources.precision == "bf16"
    with pytest.raises(ConfigError) as err:
        load_study("smoke", ["resources.precision=fp16"])
    assert any("resources.precision" in p for p in err.value.problems)


PROBE = textwrap.dedent(
    """
    import json
    import ray
    from engine.device import choose_device
    from engine.importance.config import ImportanceConfig
    from engine.importance.runner import ImportanceWorker
    from tests.conftest import tiny_bert

    # a CPU machine with two logical GPUs: Ray assigns ids and sets CUDA_VISIBLE_DEVICES as
    # on a GPU node; torch sees no CUDA here, so the device itself is the CPU
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False,
             object_store_memory=200 * 2**20, log_to_driver=False)
    out = {}
    try:
        model = ray.put(tiny_bert(num_layers=2))
        for share in (0.5, 1.0):
            cfg = ImportanceConfig(gpus_per_actor=share, cpus_per_actor=0.1)
            actors = [ImportanceWorker.options(num_cpus=0.1, num_gpus=share).remote(model, cfg, 1)
                      for _ in range(2)]
            places = ray.get([a.placement.remote() for a in actors])
            out[str(share)] = [
                {**p, "would_use": str(choose_device(
                    share, p["gpu_ids"], cuda_available=True, visible=p["visible"]))}
                for p in places
            ]
            for a in actors:
                ray.kill(a)
    finally:
        ray.shutdown()
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
def test_importance_actors_share_or_spread_over_logical_gpus(tmp_path: Path) -> None:
    env = cli_env(PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    got = json.loads(line.removeprefix("RESULT "))
    half, whole = got["0.5"], got["1.0"]
    # 0.5 each: both actors on the same GPU; 1.0 each: one GPU each
    assert [p["gpu_ids"] for p in half] == [["0"], ["0"]] or [p["gpu_ids"] for p in half] == [
        ["1"],
        ["1"],
    ]
    assert sorted(p["gpu_ids"][0] for p in whole) == ["0", "1"]
    for p in half + whole:
        assert p["visible"] == p["gpu_ids"][0]  # Ray narrowed the visible devices to it
        assert p["would_use"] == "cuda:0"  # … so on a GPU node the actor runs on cuda:0
        assert p["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_two_importance_actors_share_the_gpu_and_agree_with_one(ray_local) -> None:
    from engine.importance.config import ImportanceConfig
    from engine.importance.runner import compute_importance
    from tests.conftest import tiny_bert, toy_batches

    model = tiny_bert(num_layers=3)
    batches = toy_batches(4, 8, 12)
    data = {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}
    base = dict(methods=("fisher", "ablation"), num_batches=4, batch_size=8, cpus_per_actor=0.5)
    one = compute_importance(model, data, ImportanceConfig(**base, actors=1, gpus_per_actor=0.5))
    two = compute_importance(model, data, ImportanceConfig(**base, actors=2, gpus_per_actor=0.5))
    for m in ("fisher", "ablation"):
        torch.testing.assert_close(
            torch.as_tensor(two[m].scores), torch.as_tensor(one[m].scores), rtol=1e-3, atol=1e-6
        )
