"""nbval under pytest-xdist: a notebook that loads another's records runs after it."""

from __future__ import annotations

import subprocess
import sys

import nbformat


def notebook(path, *cells):
    """A notebook of (source, printed) cells, as if run top to bottom."""
    nb = nbformat.v4.new_notebook()
    for count, (source, printed) in enumerate(cells, 1):
        outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed)] if printed else []
        nb.cells.append(nbformat.v4.new_code_cell(source, execution_count=count, outputs=outputs))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


def test_a_notebook_waits_for_the_one_whose_records_it_loads(tmp_path):
    marker = tmp_path / "first.done"
    # 01 takes a while; 02 would start at once on the second worker without the plugin
    first = notebook(tmp_path / "01_first.ipynb", ("import time\ntime.sleep(6)", ""),
                     (f"open({str(marker)!r}, 'w').close()", ""))
    second = notebook(tmp_path / "02_second.ipynb",
                      (f"# lab.load('01_first')\nimport os\nprint(os.path.exists({str(marker)!r}))",
                       "True\n"))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-p", "d2lbn.lab.nbval_order", "-n", "2", "--dist", "loadfile",
               "--no-loadscope-reorder", "--nbval", "--nbval-current-env", first.name, second.name]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 passed" in done.stdout
