"""nbval in parallel: see d2lbn/lab/nbval_order.py."""

pytest_plugins = ["d2lbn.lab.nbval_order"]
