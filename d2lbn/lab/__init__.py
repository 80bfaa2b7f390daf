"""The lab: what runs, records, plots and benchmarks the notebooks (not for a course's imports).

Notebooks use it as ``from d2lbn import lab``: ``lab.load_data``, ``lab.epochs`` and
``lab.steps`` are where quick mode is decided; ``lab.sweep`` and ``lab.repeat`` train
in parallel, printing ``lab.run_line`` for each run; ``lab.record`` and ``lab.load``
keep runs in ``results/``; ``lab.claim`` states an answer as a difference over seeds,
its 95% interval and a verdict (``d2lbn.lab.claims``). The figures are in
``d2lbn.lab.plot``, the benchmark in ``d2lbn.lab.bench``, the notebook runner in
``d2lbn.lab.runner``.
"""

from .claims import claim
from .mode import epochs, is_quick, load_data, steps
from .parallel import repeat, run_line, sweep
from .records import BOOK, compare, epoch_swing, final, format_mean_sd, load, mean_sd, record

__all__ = ["BOOK", "claim", "compare", "epoch_swing", "epochs", "final", "format_mean_sd",
           "is_quick", "load", "load_data", "mean_sd", "record", "repeat", "run_line", "steps",
           "sweep"]
