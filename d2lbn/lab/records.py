"""Recorded runs, their tables, and the summary that ``make run`` writes to ``results/``."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import tempfile
from pathlib import Path

import numpy as onp

from ..train import History
from . import mode

RESULTS_ENV = "D2LBN_RESULTS"
METRICS = ("loss", "train_acc", "test_acc", "examples_per_sec")
# The book's single runs (d2l 0.7 printing, one GPU), for the side-by-side table
BOOK = {
    "02_lenet_batch_norm_scratch": dict(loss=0.247, train_acc=0.910, test_acc=0.816,
                                        examples_per_sec=21808.5, device="gpu(0)"),
    "03_lenet_batch_norm_concise": dict(loss=0.244, train_acc=0.912, test_acc=0.874,
                                        examples_per_sec=43091.3, device="gpu(0)"),
}


def committed_dir() -> Path:
    """The checkout's ``results/``: the committed full run's records."""
    root = Path(__file__).resolve().parents[2]
    return root / "results" if (root / "pyproject.toml").exists() else Path("results")


def results_dir() -> Path:
    """``$D2LBN_RESULTS``, else the checkout's ``results/`` (``results/quick`` in quick mode)."""
    base = Path(os.environ[RESULTS_ENV]) if os.environ.get(RESULTS_ENV) else committed_dir()
    # Quick runs never overwrite the committed full-run results
    return base / "quick" if mode.is_quick() else base


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a crash leaves the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from other users
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def record(stem: str, runs: list[History] | dict[str, list[History]]) -> Path:
    """Save a notebook's runs as ``runs/<stem>.json``: one setting's runs (one per seed),
    or several settings' by name (a sweep); final figures first, then every epoch."""
    groups = runs if isinstance(runs, dict) else {"": runs}
    if not groups or not all(groups.values()):
        raise ValueError("record() needs at least one run per setting")
    first = next(iter(groups.values()))
    entry = {"epochs": first[0].num_epochs, "batch_size": first[0].batch_size,
             "device": first[0].device, "seeds": [h.seed for h in first]}
    finals = {name: {"lr": group[0].lr, **{m: [h.final()[m] for h in group] for m in METRICS}}
              for name, group in groups.items()}
    if isinstance(runs, dict):
        entry["groups"] = finals
        entry["runs"] = {name: [dataclasses.asdict(h) for h in group]
                         for name, group in groups.items()}
    else:
        entry.update(finals[""])
        entry["runs"] = [dataclasses.asdict(h) for h in runs]
    path = results_dir() / "runs" / f"{stem}.json"
    write_atomic(path, json.dumps(entry, indent=1) + "\n")
    return path


def load(stem: str, folder: Path | None = None) -> list[History] | dict[str, list[History]]:
    """The runs notebook ``stem`` recorded, as it gave them to ``record``.

    By default the committed full run's, in any mode, so that no notebook waits for another.
    """
    path = (folder or committed_dir()) / "runs" / f"{stem}.json"
    if not path.exists():
        raise FileNotFoundError(f"no committed record at {path}: `python -m d2lbn run "
                                f"{stem[:2]}` makes one (notebooks/{stem}.ipynb in full mode)")
    runs = json.loads(path.read_text())["runs"]
    if isinstance(runs, dict):
        return {name: [History(**h) for h in group] for name, group in runs.items()}
    return [History(**h) for h in runs]


def final(groups: dict[str, list[History]], metric: str) -> dict[str, list[float]]:
    """The last epoch's ``metric`` of every run, by name (one value per seed)."""
    return {name: [h.final()[metric] for h in runs] for name, runs in groups.items()}


def epoch_swing(history: History) -> float:
    """Mean absolute change of test accuracy from one epoch to the next (0 for one epoch)."""
    acc = onp.asarray(history.test_acc)
    return float(onp.abs(onp.diff(acc)).mean()) if len(acc) > 1 else 0.0


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), sd


def format_mean_sd(metric: str, values: list[float]) -> str:
    """``mean ± sd``: whole examples/s, three decimals for losses and accuracies."""
    mean, sd = mean_sd(values)
    digits = 0 if metric == "examples_per_sec" else 3
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def compare(groups: dict[str, list[History]], book: dict[str, dict] | None = None):
    """A table of final-epoch figures, mean ± sd over seeds, beside the book's."""
    import pandas as pd

    rows = {}
    for name, runs in groups.items():
        row = {}
        for m in METRICS:
            row[m] = format_mean_sd(m, [h.final()[m] for h in runs])
        row["device"], row["seeds"] = runs[0].device, len(runs)
        rows[name] = row
    for name, figures in (book or {}).items():
        rows[name] = {**{m: f"{figures[m]:g}" for m in METRICS}, "device": figures["device"],
                      "seeds": 1}
    return pd.DataFrame.from_dict(rows, orient="index")


def write_summary(wall_s: dict[str, float], run: dict | None = None,
                  cpu_s: dict[str, float] | None = None) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``summary.md`` from the recorded runs, wall and CPU times.

    Notebooks not in ``wall_s`` keep their entries from the previous summary; so
    does the whole run's figure (``run``: its wall time and processes) unless given.
    """
    cpu_s = cpu_s or {}
    out = results_dir()
    json_path, md_path = out / "summary.json", out / "summary.md"
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    notebooks = previous.get("notebooks", {})
    for stem in sorted(wall_s):
        path = out / "runs" / f"{stem}.json"
        entry = json.loads(path.read_text()) if path.exists() else {}
        entry.pop("runs", None)
        notebooks[stem] = {**entry, "wall_s": round(wall_s[stem], 1)}
        if stem in cpu_s:
            notebooks[stem]["cpu_s"] = round(cpu_s[stem], 1)
    summary = {"mode": mode.name(), "notebooks": dict(sorted(notebooks.items()))}
    if run or "run" in previous:
        summary["run"] = run or previous["run"]
    write_atomic(json_path, json.dumps(summary, indent=1) + "\n")
    write_atomic(md_path, summary_markdown(summary))
    return json_path, md_path


def summary_markdown(summary: dict) -> str:
    """The summary as a Markdown table: one row per notebook."""
    notebooks = summary["notebooks"]
    lines = [f"# Results ({summary['mode']} run)", "",
             "Final-epoch figures, mean ± sd over seeds; wall time of the whole notebook, and its "
             "CPU time (its kernel's and its workers': the core-time it cost).", ""]
    if "run" in summary:
        r = summary["run"]
        # fsum: the same total on every Python (3.12's sum() compensates, 3.11's does not)
        total = math.fsum(e["wall_s"] for e in notebooks.values())
        cost = f", {r['cpu_s'] / 60:.0f} core-minutes" if "cpu_s" in r else ""
        lines += [f"The last whole run, of {r['notebooks']} notebooks, took "
                  f"{r['wall_s'] / 60:.0f} min with {r['jobs']} processes at a time "
                  f"({total / 60:.0f} min of notebook wall time in all{cost}).", ""]
    timed = [e["cpu_s"] for e in notebooks.values() if "cpu_s" in e]
    if timed:
        lines += [f"CPU time recorded for {len(timed)} of {len(notebooks)} notebooks: "
                  f"{math.fsum(timed) / 60:.0f} core-minutes in all.", ""]
    lines += ["| notebook | wall time | CPU time | seeds | epochs | lr | batch | device | loss "
              "| train acc | test acc | examples/s |", "|---" * 12 + "|"]
    for stem, e in notebooks.items():
        cpu = f"{e['cpu_s'] / 60:.0f} min" if "cpu_s" in e else "–"
        cells = [f"`{stem}`", f"{e['wall_s']:.0f} s", cpu]
        if "groups" in e:
            # A sweep: its settings' figures are in runs/<stem>.json and the notebook
            lrs = sorted({g["lr"] for g in e["groups"].values()})
            lr = f"{lrs[0]:g}" if len(lrs) == 1 else f"{lrs[0]:g} to {lrs[-1]:g}"
            cells += [", ".join(map(str, e["seeds"])), str(e["epochs"]), lr,
                      str(e["batch_size"]), e["device"]]
            cells += [f"{len(e['groups'])} settings"] + ["–"] * (len(METRICS) - 1)
        elif "seeds" in e:
            cells += [", ".join(map(str, e["seeds"])), str(e["epochs"]), f"{e['lr']:g}",
                      str(e["batch_size"]), e["device"]]
            cells += [format_mean_sd(m, e[m]) for m in METRICS]
        else:
            cells += ["–"] * 9
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
