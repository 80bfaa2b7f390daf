"""nbval under pytest-xdist: each notebook's cells on one worker, in order.

A notebook that loads another's records (``lab.load``) joins that notebook's
group, so that it runs after it on the same worker (``--dist loadgroup``).
"""

from pathlib import Path

import pytest


def pytest_collection_modifyitems(items):
    groups = {}
    for item in items:
        path = Path(str(item.fspath))
        if path.suffix != ".ipynb":
            continue
        if path.stem not in groups:
            from d2lbn.lab.runner import loads

            needs = sorted(loads(path))
            groups[path.stem] = groups.get(needs[0], needs[0]) if needs else path.stem
        item.add_marker(pytest.mark.xdist_group(groups[path.stem]))
