"""What the benchmark scripts share: timing, peak memory, fresh-process runs, the machine, and results files.

The scripts run as ``python bench/bench_x.py`` from the repository root; each puts this folder on
``sys.path`` and imports from here::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import median_seconds, round_robin, write_results  # noqa: E402

Nothing here imports torch at import time: some scripts set environment variables before torch loads, or
(bench_retrieval's parent process) never load it at all.

Timing
    ``sync``            wait for a device's queued kernels (no-op on the CPU and for ``device=None``)
    ``time_call``       wall-clock and CPU seconds of one call, synchronised on both sides
    ``round_robin``     several cases timed in interleaved rounds, so drift on a shared machine hits all alike
    ``median_seconds``  the median wall-clock seconds of one function (``round_robin`` of a single case)
Memory
    ``rss_bytes``          this process's resident set now (``/proc/self/statm``)
    ``peak_memory_bytes``  the peak extra memory of one call (CUDA allocator peak, or Linux VmHWM - VmRSS)
    ``PeakRSS``            a sampling thread: peak resident set above a baseline while a ``with`` block runs
    ``run_script``         ``python script args...`` in a fresh process, its last stdout line read as JSON
Results
    ``device_name``, ``machine_info``  what ran it;  ``write_json``, ``write_results``  the results file
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

__all__ = [
    "PeakRSS",
    "ScriptError",
    "Timings",
    "device_name",
    "machine_info",
    "median_seconds",
    "peak_memory_bytes",
    "round_robin",
    "rss_bytes",
    "run_script",
    "sync",
    "time_call",
    "write_json",
    "write_results",
]


# ------------------------------------------------------------------------------------------------ timing
def _device_type(device: Any) -> str | None:
    """``"cuda"`` for ``torch.device("cuda:1")`` or the string ``"cuda"``; None for None."""
    if device is None:
        return None
    return device.type if hasattr(device, "type") else str(device).split(":", 1)[0]


def sync(device: Any) -> None:
    """Wait until every kernel queued on ``device`` (a ``torch.device`` or a string such as ``"cuda"``) has run.

    A no-op on the CPU and for ``device=None``, so that CPU-only scripts can pass None and never import torch.
    """
    if _device_type(device) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: Any = None, number: int = 1) -> tuple[float, float]:
    """Seconds per call of ``fn`` run ``number`` times in a row: ``(wall, cpu)``.

    ``wall`` is ``time.perf_counter``, ``cpu`` this process's CPU time (``time.process_time``, which other
    jobs on a shared machine do not inflate). The device is synchronised before and after, so queued GPU
    work is neither charged to the call nor left out of it.
    """
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(number):
        fn()
    sync(device)
    return (time.perf_counter() - wall) / number, (time.process_time() - cpu) / number


@dataclass
class Timings:
    """The timed samples of one case, in seconds per call: wall-clock and CPU time (see ``time_call``)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)


def _with_progress(rounds: Iterable[int], desc: str) -> Iterable[int]:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency of polyheads
        return rounds
    return tqdm(rounds, desc=desc, leave=False)


def round_robin(
    cases: Mapping[str, Callable[[], object]],
    device: Any,
    repeats: int,
    warmup: int = 0,
    *,
    number: int = 1,
    before: Callable[[], object] | None = None,
    progress: str | None = None,
) -> dict[str, Timings]:
    """Time several cases side by side: ``repeats`` rounds, each calling every case once in turn.

    Interleaving the cases makes slow drift of a shared machine (other jobs, thermal state) hit them alike,
    so their ratios stay meaningful. First every case runs ``warmup`` untimed calls (lazy initialisation,
    allocator caches, cuDNN autotuning). Each timed sample is ``number`` consecutive calls, divided by
    ``number``. ``before``, when given, runs untimed before every call (warm-up included): clearing
    gradients, a distributed barrier. ``progress`` shows a tqdm bar over the rounds with that label.

    Returns ``{name: Timings}`` with ``repeats`` samples per case; see ``Timings.median_wall`` / ``median_cpu``.
    """
    for fn in cases.values():
        for _ in range(warmup):
            if before is not None:
                before()
            fn()
    sync(device)
    timings = {name: Timings() for name in cases}
    rounds: Iterable[int] = range(repeats)
    if progress:
        rounds = _with_progress(rounds, progress)
    for _ in rounds:
        for name, fn in cases.items():
            if before is not None:
                before()
            wall, cpu = time_call(fn, device, number)
            timings[name].wall.append(wall)
            timings[name].cpu.append(cpu)
    return timings


def median_seconds(
    fn: Callable[[], object],
    device: Any,
    repeats: int,
    warmup: int = 0,
    *,
    before: Callable[[], object] | None = None,
) -> float:
    """Median wall-clock seconds of ``repeats`` timed calls of ``fn`` after ``warmup`` untimed ones.

    ``round_robin`` with a single case; ``device=None`` (or a CPU device) times without synchronising.
    """
    return round_robin({"fn": fn}, device, repeats, warmup, before=before)["fn"].median_wall


# ------------------------------------------------------------------------------------------------ memory
def rss_bytes() -> int:
    """This process's resident set size now, in bytes (``/proc/self/statm``, Linux; cheap enough to poll)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _proc_status_bytes(key: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...) in bytes; None where it cannot be read."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        return None
    return None


def peak_memory_bytes(fn: Callable[[], object], device: Any = None) -> int | None:
    """The peak memory one call of ``fn`` needs beyond what is held before it, in bytes.

    CUDA: ``torch.cuda.max_memory_allocated`` over the call minus the memory allocated before it. CPU
    (Linux): the resident-set high-water mark over the call (``VmHWM``, reset to the current resident set
    through ``/proc/self/clear_refs``) minus the resident set before it. None where neither can be read.

    Warm ``fn`` up and clear what it should allocate afresh (gradients) before calling this; measure in a
    fresh process (``run_script``) when a warm allocator would hide the peak.
    """
    import gc

    gc.collect()
    if _device_type(device) == "cuda":
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current resident set
    except OSError:  # pragma: no cover - not Linux
        return None
    base = _proc_status_bytes("VmRSS")
    fn()
    peak = _proc_status_bytes("VmHWM")
    return None if base is None or peak is None else peak - base


class PeakRSS:
    """Peak resident memory of this process above a baseline, sampled every ``interval`` seconds by a thread.

    The baseline is the resident set when the object is made::

        with PeakRSS() as mem:
            work()
        mem.extra_mib  # peak above the baseline, MiB
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.baseline = rss_bytes()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.baseline) / 2**20


class ScriptError(RuntimeError):
    """A ``run_script`` child failed or printed no JSON; ``stderr`` holds what it wrote there."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(f"{message}\n{stderr[-2000:]}")
        self.stderr = stderr


def run_script(script: str | Path, args: Iterable[str], *, env: Mapping[str, str] | None = None,
               cwd: str | Path | None = None) -> Any:
    """Run ``python script *args`` in a fresh process and return the JSON value on its last stdout line.

    A fresh process measures memory that a warm allocator in this one would hide. ``env`` is added to
    (and overrides) this process's environment. Raises ``ScriptError`` when the child exits non-zero or
    its last line is not JSON.
    """
    command = [sys.executable, str(script), *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd)
    if done.returncode:
        raise ScriptError(f"{' '.join(command)} exited with {done.returncode}", done.stderr)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise ScriptError(f"{' '.join(command)} printed no JSON result", done.stderr) from None


# ------------------------------------------------------------------------------------------------ results
def device_name(device: Any) -> str:
    """The GPU's name for a CUDA device, else the processor (``platform.processor()`` or the architecture)."""
    if _device_type(device) == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def machine_info(device: Any) -> dict[str, Any]:
    """What ran a benchmark, as results files record it: the device and its name, torch's thread count,
    ``OMP_NUM_THREADS``, and the torch and polyheads versions (in that key order)."""
    import torch

    import polyheads

    return {
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "polyheads": polyheads.__version__,
    }


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` to ``path`` as indented JSON (a trailing newline), creating its folder; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path


def write_results(path: str | Path, device_type: str, result: Mapping[str, Any]) -> Path:
    """Store one device's run in a results file that keeps a run per device: ``{"runs": {device_type: result}}``.

    The other devices' runs already in the file stay (a file that is missing, not JSON, or not in this
    layout starts afresh), so a CPU run and a GPU run of the same benchmark live side by side.
    """
    path = Path(path)
    existing: Any = {}
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            existing = {}
    per_device = existing if isinstance(existing, dict) and isinstance(existing.get("runs"), dict) else {"runs": {}}
    per_device["runs"][device_type] = dict(result)
    return write_json(path, per_device)
