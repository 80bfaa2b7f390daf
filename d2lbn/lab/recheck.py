"""``python -m d2lbn recheck NN [NN ...]``: do the notebooks' claims survive another float path?

Re-runs the notebooks into a scratch folder (never over the committed notebooks or
``results/``) with oneDNN on an instruction set other than the committed run's
(``results/float_path.json``), or off, and lists every claim whose verdict differs
from the committed one. Exits 1 if a claim that held, or came out reversed, does not,
timing claims aside (their text starts "Timing, "): they measure the machine's speed under
its load at the time, not the float path, and are listed without failing the check.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

from . import floatpath, runner
from .argtypes import at_least
from .claims import TIMING
from .parallel import environ
from .records import RESULTS_ENV, results_dir

DECIDED = ("holds", "reversed")


@dataclasses.dataclass
class Change:
    """A claim whose verdict differs between the committed run and the re-run."""

    notebook: str
    text: str
    committed: str  # a verdict, or "absent"
    rerun: str

    def timing(self) -> bool:
        """Whether it is a timing claim that the re-run still made."""
        return self.text.startswith(TIMING) and self.rerun != "absent"

    def fails(self) -> bool:
        """Whether a decided claim, not a timing one, came out otherwise."""
        return self.committed in DECIDED and self.rerun != self.committed and not self.timing()


def parser() -> argparse.ArgumentParser:
    """The options: notebooks, and optionally the float path and the scratch folder."""
    p = argparse.ArgumentParser(prog="python -m d2lbn recheck",
                                description=__doc__.split("\n")[0])
    p.add_argument("notebooks", nargs="+", help="paths or numbers, e.g. 12 16")
    path = p.add_mutually_exclusive_group()
    path.add_argument("--isa", choices=list(floatpath.ISA_FLAGS),
                      help="cap oneDNN at this instruction set (DNNL_MAX_CPU_ISA); by default "
                           "one other than the committed run's")
    path.add_argument("--no-onednn", action="store_true",
                      help="turn oneDNN off (MXNET_MKLDNN_ENABLED=0)")
    p.add_argument("--jobs", "-j", type=at_least(1), default=None,
                   help="processes at once (default: the cores)")
    p.add_argument("--out", type=Path, default=None,
                   help="scratch folder for the re-run (default: a new one in results/.tmp)")
    return p


def same_path(a: dict, b: dict) -> bool:
    """Whether two recorded float paths run the same kernels (oneDNN's ISA, OpenBLAS's core)."""
    return ((a.get("onednn") or {}).get("isa") == (b.get("onednn") or {}).get("isa")
            and (a.get("openblas") or {}).get("core") == (b.get("openblas") or {}).get("core"))


def choose(args: argparse.Namespace, committed: dict | None) -> tuple[dict, dict]:
    """The settings of the re-run and its float path, other than ``committed``'s."""
    if args.no_onednn:
        env = {"MXNET_MKLDNN_ENABLED": "0"}
    elif args.isa:
        env = {"DNNL_MAX_CPU_ISA": args.isa, "MXNET_MKLDNN_ENABLED": None}
    else:
        env = floatpath.other_than(committed, floatpath.cpu()[1])
    path = floatpath.float_path(env)
    if committed and same_path(path, committed):
        if args.isa or args.no_onednn:
            raise ValueError(f"{floatpath.describe(path)} is the committed run's float "
                             "path; choose another")
        env = {"MXNET_MKLDNN_ENABLED": "0"}  # oneDNN off differs from any oneDNN path
        path = floatpath.float_path(env)
    return env, path


def changes(committed: Path, rerun: Path, notebooks: list[str]) -> tuple[list[Change], int]:
    """Claims whose verdict differs between two results folders, and how many were compared.

    ``notebooks``: the claims files to compare (``claims/<name>.json``), besides every
    one the re-run wrote.
    """
    names = sorted(set(notebooks) | {p.stem for p in (rerun / "claims").glob("*.json")})
    found, count = [], 0
    for name in names:
        old, new = _verdicts(committed / "claims" / f"{name}.json"), \
            _verdicts(rerun / "claims" / f"{name}.json")
        count += len(old.keys() | new.keys())
        for text in dict.fromkeys([*old, *new]):  # the committed order, then new claims
            before, after = old.get(text, "absent"), new.get(text, "absent")
            if before != after:
                found.append(Change(name, text, before, after))
    return found, count


def _verdicts(path: Path) -> dict[str, str]:
    return {c["text"]: c["verdict"] for c in json.loads(path.read_text())} \
        if path.exists() else {}


def committed_path(folder: Path, stems: list[str]) -> dict | None:
    """The float path of these notebooks' committed outputs (else of the last run), or None."""
    known = {floatpath.describe(path): path
             for path in (floatpath.read(folder, stem) for stem in stems) if path}
    if len(known) > 1:
        raise ValueError(f"these notebooks' outputs come from different float paths "
                         f"({'; '.join(known)}): recheck them apart")
    return next(iter(known.values()), None) or floatpath.read(folder)


def main(argv: list[str]) -> int:
    """Re-run the notebooks on another float path; list changed claims; 1 if any failed."""
    p = parser()
    args = p.parse_args(argv)
    committed_dir = results_dir()
    try:
        paths = runner.resolve(args.notebooks)
        committed = committed_path(committed_dir, [q.stem for q in paths])
        env, path = choose(args, committed)
    except ValueError as err:
        p.error(str(err))
    print(f"[d2lbn] recheck on {floatpath.describe(path)}")
    print("[d2lbn] committed run: "
          + (floatpath.describe(committed) if committed
             else f"not recorded ({committed_dir / floatpath.FILE} is missing)"), flush=True)
    if args.out:
        scratch = args.out.resolve()
        scratch.mkdir(parents=True, exist_ok=True)
    else:
        tmp = committed_dir / ".tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="recheck-", dir=tmp))
    copies = []
    for p in paths:
        (scratch / "notebooks").mkdir(exist_ok=True)
        copies.append(Path(shutil.copy2(p, scratch / "notebooks" / p.name)))
    with environ(**env, **{RESULTS_ENV: str(scratch / "results")}):
        rerun_dir = results_dir()  # scratch/results, or its quick/ in quick mode
        try:  # run_all also records the re-run's float path there
            wall = runner.run_all(copies, args.jobs)
        except RuntimeError as err:
            print(f"python -m d2lbn recheck: {err}")
            return 1
    for stem, seconds in wall.items():
        print(f"[d2lbn] {stem}: {seconds / 60:.1f} min")
    found, count = changes(committed_dir, rerun_dir, [p.stem for p in paths])
    failed = [c for c in found if c.fails()]
    for c in found:
        note = " (a timing claim: this machine's load, not the float path)" if c.timing() else ""
        print(f"{'FLIPPED' if c.fails() else 'changed'} {c.notebook}: {c.text!r}: "
              f"{c.committed} -> {c.rerun}{note}")
    print(f"[d2lbn] {count} claims in {len(paths)} notebooks: {len(found)} with another "
          f"verdict, {len(failed)} of them decided before. Re-run in {scratch}")
    return 1 if failed else 0
