"""A pytest plugin for nbval under pytest-xdist (``--dist loadfile --no-loadscope-reorder``).

A notebook that loads another's records (``lab.load``) may land on another worker,
so its first cell waits until that notebook's last cell has run. Files are handed
out in collection order (no reordering), so a worker never holds a notebook before
the one it waits for, and the wait cannot deadlock.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

WAIT_S = 1800  # longer than any notebook takes in quick mode
_first: dict[str, list[str]] = {}  # nodeid of a notebook's first cell -> the stems it needs
_last: dict[str, str] = {}  # nodeid of a notebook's last cell -> its stem


def _done(stem: str) -> Path:
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "sequential")
    return Path(tempfile.gettempdir()) / f"d2lbn-nbval-{run}" / f"{stem}.done"


def pytest_collection_modifyitems(items):
    from d2lbn.lab.runner import loads

    by_file: dict[Path, list] = {}
    for item in items:
        path = Path(str(item.fspath))
        if path.suffix == ".ipynb":
            by_file.setdefault(path, []).append(item)
    for path, cells in by_file.items():
        _first[cells[0].nodeid] = sorted(loads(path))
        _last[cells[-1].nodeid] = path.stem


def pytest_runtest_setup(item):
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return  # one process runs the files in order
    waiting = [_done(stem) for stem in _first.get(item.nodeid, [])]
    deadline = time.monotonic() + WAIT_S
    while any(not p.exists() for p in waiting):
        if time.monotonic() > deadline:
            pytest.fail(f"waited {WAIT_S} s for {[p.stem for p in waiting]} to run first")
        time.sleep(1)


def pytest_runtest_teardown(item):
    if item.nodeid in _last:
        done = _done(_last[item.nodeid])
        done.parent.mkdir(exist_ok=True)
        done.touch()
