"""nbval under pytest-xdist: a notebook that loads another's records runs after it."""

from __future__ import annotations

import subprocess
import sys

from helpers import write_notebook


def test_a_notebook_waits_for_the_one_whose_records_it_loads(tmp_path):
    marker = tmp_path / "first.done"
    # 01 takes a while; 02 would start at once on the second worker without the plugin
    first = write_notebook(tmp_path / "01_first.ipynb", ("import time\ntime.sleep(6)", ""),
                           (f"open({str(marker)!r}, 'w').close()", ""))
    second = write_notebook(tmp_path / "02_second.ipynb",
                            (f"# lab.load('01_first')\nimport os\n"
                             f"print(os.path.exists({str(marker)!r}))", "True\n"))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-p", "d2lbn.lab.nbval_order", "-n", "2", "--dist", "loadfile",
               "--no-loadscope-reorder", "--nbval", "--nbval-current-env", first.name, second.name]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 passed" in done.stdout
