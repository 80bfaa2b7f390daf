"""The package's old flat module paths, kept until every notebook is re-run with the new ones."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    **{f"d2lbn.{m}": f"d2lbn.norms.{m}"
       for m in ("renorm", "whiten", "compact", "sparse", "project")},
    **{f"d2lbn.{m}": f"d2lbn.analysis.{m}"
       for m in ("bnstats", "fold", "invariance", "activations", "landscape")},
    **{f"d2lbn.{m}": f"d2lbn.scale.{m}" for m in ("sync", "dist")},
}


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import an old path as the very module object that now lives at the new one."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])
        spec.loader_state = module.__spec__  # the import system puts the alias's spec in its place
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state  # the new path's import already ran it


def install() -> None:
    """Let ``import d2lbn.sync`` and ``from d2lbn import sync`` find the moved modules."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
