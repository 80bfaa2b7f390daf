"""Execute, strip and check the notebooks: what ``make run`` and the tests use.

``run_all`` executes notebooks concurrently, each kernel single-threaded and
holding one token of the run's jobserver (see ``parallel``), longest first.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

import nbformat

from . import floatpath, mode
from .parallel import JOBS_ENV, JOBSERVER_ENV, JobServer, environ
from .parallel import jobs as parallel_jobs
from .prose import IGNORE
from .records import RESULTS_ENV, results_dir, write_atomic, write_summary

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
# Cell metadata that changes from run to run and means nothing to a reader
VOLATILE = ("execution", "collapsed", "scrolled", "ExecuteTime")
PROGRESS_EVERY_S = 300
# nbval compares every output but those of cells tagged IGNORE, which carry one of
# these tags beside it to say why their output varies
IGNORE_REASONS = {
    "varies-versions": "library versions, or the device found",
    "varies-timing": "times and throughputs",
    "varies-full-run": "figures of training, which quick mode shortens",
    "varies-rounding": "float32 rounding, which differs between CPUs",
}


def notebooks() -> list[Path]:
    """The companion's notebooks, in reading order."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def resolve(names: list[str]) -> list[Path]:
    """Notebook paths from paths or names (``02``, ``02_lenet...``); an error names the unknown."""
    known, found, unknown = notebooks(), [], []
    for name in names:
        path = Path(name)
        if path.suffix == ".ipynb" and path.exists():
            found.append(path.resolve())
            continue
        match = [p for p in known if p.stem == path.stem or p.name.startswith(f"{path.stem}_")]
        (found.append(match[0]) if len(match) == 1 else unknown.append(name))
    if unknown:
        raise ValueError(f"no such notebook: {', '.join(unknown)} (in {NOTEBOOKS}: "
                         f"{', '.join(p.stem[:2] for p in known)})")
    return found


def strip(nb) -> None:
    """Remove volatile metadata in place; outputs and execution counts stay (nbval needs them)."""
    for cell in nb.cells:
        for key in VOLATILE:
            cell.metadata.pop(key, None)
    nb.metadata.pop("widgets", None)
    nb.metadata.get("language_info", {}).pop("version", None)


def code_digest(nb) -> str:
    """SHA-1 of the code cells' sources: tells whether code changed after a run."""
    code = "\0".join(c.source for c in nb.cells if c.cell_type == "code")
    return hashlib.sha1(code.encode()).hexdigest()


def stamp(nb) -> None:
    """Mark a notebook as executed in this mode with its current code."""
    nb.metadata["d2lbn"] = {"mode": mode.name(), "code_sha1": code_digest(nb)}


def problems(nb) -> list[str]:
    """What keeps a notebook from being committed: no full run, stale code, errors, counts
    other than those of one top-to-bottom run."""
    run = nb.metadata.get("d2lbn", {})
    found = []
    if not run:
        found.append("not executed by `make run` (no run stamp)")
    elif run.get("mode") != "full":
        found.append(f"outputs come from a {run.get('mode')} run, not a full one")
    elif run.get("code_sha1") != code_digest(nb):
        found.append("code cells changed since the last run")
    code = [c for c in nb.cells if c.cell_type == "code"]
    for count, cell in enumerate(code, 1):
        if cell.execution_count != count:
            found.append(f"code cell {count}: execution count {cell.execution_count}, "
                         f"not {count} as in one top-to-bottom run")
        for out in cell.outputs:
            if out.output_type == "error":
                found.append(f"code cell {count}: error {out.ename}: {out.evalue}")
    return found


def unexplained_ignores(nb) -> list[str]:
    """Cells whose output nbval ignores without exactly one reason tag."""
    found = []
    for count, cell in enumerate((c for c in nb.cells if c.cell_type == "code"), 1):
        tags = set(cell.metadata.get("tags", []))
        if IGNORE in tags and len(tags & set(IGNORE_REASONS)) != 1:
            found.append(f"code cell {count}: ignored by nbval without one of "
                         f"{sorted(IGNORE_REASONS)}")
    return found


def compared_outputs(nb) -> int:
    """How many code cells have an output that nbval compares."""
    return sum(1 for c in nb.cells if c.cell_type == "code" and c.outputs
               and IGNORE not in c.metadata.get("tags", []))


def recorded_wall_s() -> dict[str, float]:
    """Each notebook's wall time in the last full run (``results/summary.json``)."""
    path = results_dir() / "summary.json"
    if not path.exists():
        return {}
    return {k: v["wall_s"] for k, v in json.loads(path.read_text())["notebooks"].items()}


def schedule(paths: list[Path], wall: dict[str, float]) -> list[Path]:
    """Longest recorded notebook first, so that the run ends soonest."""
    default = statistics.median(wall.values()) if wall else 60.0
    return sorted(paths, key=lambda p: -wall.get(p.stem, default))


def estimate_left(running: dict[str, float], pending: list[str], wall: dict[str, float],
                  jobs: int) -> float:
    """Seconds left, from recorded wall times: the pending notebooks greedily on ``jobs`` slots.

    ``running`` maps each running notebook to its seconds so far.
    """
    default = statistics.median(wall.values()) if wall else 60.0
    slots = sorted(max(wall.get(s, default) - t, 0.0) for s, t in running.items())
    slots += [0.0] * max(jobs - len(slots), 0)
    for stem in pending:
        slots.sort()
        slots[0] += wall.get(stem, default)
    return max(slots, default=0.0)


def cpu_s(pid: int) -> float | None:
    """CPU seconds a process and its children it has waited for have used (None off Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # proc(5): utime, stime, cutime, cstime are fields 14-17; the name (field 2) may hold spaces
    fields = stat.rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


async def execute_async(path: Path, timeout: int = 7200):
    """Run a notebook top to bottom in its folder; return it, its wall time and CPU time.

    The CPU time is the kernel's and that of every process it started and joined (a
    sweep's workers), read after each cell: the core-seconds the notebook cost.
    """
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    used = {}
    client.on_cell_executed = lambda **_: used.update(s=cpu_s(client.km.provisioner.pid))
    tic = time.perf_counter()
    try:
        await client.async_execute()
    except BaseException as err:
        err.nb = nb  # the partly executed notebook, for the caller to keep
        raise
    return nb, time.perf_counter() - tic, used.get("s")


def execute(path: Path, timeout: int = 7200):
    """``execute_async``, waited for."""
    return asyncio.run(execute_async(path, timeout))


def run_all(paths: list[Path] | None = None, jobs: int | None = None) -> dict[str, float]:
    """Execute notebooks, ``jobs`` processes at a time; replace them and ``results/`` only
    if every one ran cleanly.

    Runs go to an empty staging folder first, so a failure leaves the committed
    notebooks and results as they were; the executed copies and partial runs stay in
    the staging folder. Only the records these notebooks wrote are copied back.
    """
    jobs = jobs or parallel_jobs()
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    whole = not paths or sorted(paths) == notebooks()
    paths = paths or notebooks()
    final = results_dir()
    recorded = recorded_wall_s()
    staging = Path(tempfile.mkdtemp(prefix="run-", dir=_mkdir(final / ".tmp")))
    server = JobServer.create(str(staging / "jobserver"), jobs)
    # Kernels inherit the environment: their records land in staging
    env = {RESULTS_ENV: str(staging), JOBSERVER_ENV: server.path, JOBS_ENV: str(jobs),
           "OMP_NUM_THREADS": "1"}
    try:
        with environ(**env):
            produced = results_dir()  # where the kernels' records land: staging(/quick)
            tic = time.perf_counter()
            executed, wall, cpu = asyncio.run(_run(paths, jobs, server, staging, recorded))
        run = {"notebooks": len(paths), "jobs": jobs, "wall_s": round(time.perf_counter() - tic)}
        if len(cpu) == len(wall):  # every notebook measured (Linux)
            run["cpu_s"] = round(math.fsum(cpu.values()))
    finally:
        server.close()
    for path, nb in executed.items():
        write_atomic(path, nbformat.writes(nb) + "\n")
    for record in sorted(produced.glob("*/*.json")):  # runs/, and claims/ if any
        write_atomic(final / record.parent.name / record.name, record.read_text())
    # The kernels' instruction set and libraries, per notebook: what recheck steers away from
    floatpath.write(final, notebooks=[p.stem for p in executed])
    shutil.rmtree(staging)
    json_path, md_path = write_summary(wall, run if whole else None, cpu_s=cpu)
    print(f"[d2lbn] wrote {json_path} and {md_path}")
    return wall


async def _run(paths, jobs, server, staging, recorded):
    # Ctrl-C (or SIGTERM) cancels every notebook, and nbclient then shuts its kernel down
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main.cancel)
    order = schedule(paths, recorded)
    executed, wall, cpu, started, failed = {}, {}, {}, {}, []
    finished = asyncio.Event()
    t0 = time.perf_counter()

    def progress(event: str) -> None:
        now = time.perf_counter()
        running = {s: now - t for s, t in started.items() if s not in wall}
        pending = [p.stem for p in order if p.stem not in started]
        left = estimate_left(running, pending, recorded, jobs)
        print(f"[d2lbn] {event} | {len(wall)}/{len(paths)} done, running "
              f"{', '.join(s[:2] for s in running) or 'none'}, about {left / 60:.0f} min left "
              f"({(now - t0) / 60:.0f} min so far)", flush=True)

    async def one(path: Path) -> None:
        # In schedule order: a token goes to the first notebook not yet started
        while (next((p for p in order if p.stem not in started), None) != path
               or not server.try_acquire()):
            if failed:
                return
            await asyncio.sleep(0.2)
        if failed:
            server.release()
            return
        started[path.stem] = time.perf_counter()
        progress(f"started {path.name}")
        try:
            nb, seconds, cpu_seconds = await execute_async(path)
            strip(nb)
            stamp(nb)
            trouble = [p for p in problems(nb) if "quick run" not in p]
            if trouble:
                raise RuntimeError(f"ran but is not clean: {trouble}")
            nbformat.write(nb, str(staging / path.name))
            executed[path], wall[path.stem] = nb, seconds
            if cpu_seconds is not None:
                cpu[path.stem] = cpu_seconds
            progress(f"finished {path.name} in {seconds:.0f} s")
        except Exception as err:
            nb = getattr(err, "nb", None)
            if nb is not None:
                nbformat.write(nb, str(staging / path.name))
            # nbclient's CellExecutionError carries the cell's exception name and value
            what = f"{getattr(err, 'ename', type(err).__name__)}: {getattr(err, 'evalue', err)}"
            failed.append(f"{path.name} ({what})")
            print(f"[d2lbn] {path.name} FAILED ({what}); finishing the running notebooks",
                  flush=True)
        finally:
            server.release()

    async def heartbeat() -> None:
        while not finished.is_set():
            try:
                await asyncio.wait_for(finished.wait(), PROGRESS_EVERY_S)
            except asyncio.TimeoutError:
                progress("still running")

    beat = asyncio.ensure_future(heartbeat())
    tasks = [asyncio.ensure_future(one(p)) for p in order]
    try:
        await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise KeyboardInterrupt(f"stopped; every kernel was shut down. Nothing was replaced; "
                                f"executed copies and partial runs are in {staging}") from None
    finally:
        finished.set()
        await beat
    if failed:
        raise RuntimeError(f"failed: {'; '.join(failed)}. Nothing was replaced; executed "
                           f"copies and partial runs are in {staging}")
    return executed, wall, cpu


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
