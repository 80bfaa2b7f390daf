"""Sweeps for the exercise notebooks: several settings, each trained once per seed."""

from __future__ import annotations

import dataclasses
import json
from typing import Callable, Dict, Tuple

import numpy as onp

from . import train
from .results import METRICS, results_dir, write_atomic

# name -> (a function building a fresh net, learning rate); typing's generics, since
# a subscripted dict outside an annotation needs Python 3.9
Settings = Dict[str, Tuple[Callable[[], object], float]]


def sweep(settings: Settings, train_iter, test_iter, num_epochs: int,
          seeds: tuple[int, ...] = (0, 1), device=None, hybridize: bool = True,
          measure: dict[str, Callable] | None = None) -> dict[str, list[train.History]]:
    """Train every setting once per seed; print one line per run; return the runs by name.

    ``measure`` maps names to functions of the trained net; their values go to
    each run's ``History.extra``.
    """
    if not settings or not seeds:
        raise ValueError("sweep() needs at least one setting and one seed")
    groups, done, total = {}, 0, len(settings) * len(seeds)
    for name, (make_net, lr) in settings.items():
        groups[name] = []
        for seed in seeds:
            net = make_net()
            h = train.train(net, train_iter, test_iter, num_epochs, lr, device=device,
                            seed=seed, animate=False, hybridize=hybridize, quiet=True)
            h.extra = {key: fn(net) for key, fn in (measure or {}).items()}
            groups[name].append(h)
            done += 1
            f = h.final()
            print(f"[{done}/{total}] {name}, seed {seed}: loss {f['loss']:.3f}, train acc "
                  f"{f['train_acc']:.3f}, test acc {f['test_acc']:.3f} ({h.wall_s:.0f} s)",
                  flush=True)
    return groups


def final(groups: dict[str, list[train.History]], metric: str) -> dict[str, list[float]]:
    """The last epoch's ``metric`` of every run, by name (one value per seed)."""
    return {name: [h.final()[metric] for h in runs] for name, runs in groups.items()}


def epoch_swing(history: train.History) -> float:
    """Mean absolute change of test accuracy from one epoch to the next (0 for one epoch)."""
    acc = onp.asarray(history.test_acc)
    return float(onp.abs(onp.diff(acc)).mean()) if len(acc) > 1 else 0.0


def record_groups(stem: str, groups: dict[str, list[train.History]]):
    """Save a sweep's runs as ``runs/<stem>.json``: final figures per name, then every epoch."""
    if not groups:
        raise ValueError("record_groups() needs at least one group")
    first = next(iter(groups.values()))[0]
    entry = {"epochs": first.num_epochs, "batch_size": first.batch_size,
             "device": first.device, "seeds": [h.seed for h in next(iter(groups.values()))],
             "groups": {name: {"lr": runs[0].lr,
                               **{m: [h.final()[m] for h in runs] for m in METRICS}}
                        for name, runs in groups.items()},
             "runs": {name: [dataclasses.asdict(h) for h in runs]
                      for name, runs in groups.items()}}
    path = results_dir() / "runs" / f"{stem}.json"
    write_atomic(path, json.dumps(entry, indent=1) + "\n")
    return path


def load_groups(stem: str) -> dict[str, list[train.History]]:
    """The runs a sweep recorded with ``record_groups``; a clear error if it has not run."""
    path = results_dir() / "runs" / f"{stem}.json"
    if not path.exists():
        raise FileNotFoundError(f"no recorded runs at {path}: run notebooks/{stem}.ipynb "
                                "first (`make run` runs every notebook in order)")
    return {name: [train.History(**run) for run in runs]
            for name, runs in json.loads(path.read_text())["runs"].items()}
