"""Figures in a notebook's prose that a re-run would not reproduce.

Every decimal figure in a notebook's markdown (``0.816``, ``8.4×``, ``−2.72``) must
be a setting written in its code (``lr = 0.01``) or be shown, at the precision
written, by an output that nbval compares: one that is the same on any machine,
such as the book's figures printed from the package. LaTeX, inline code and version
numbers are not figures.
"""

from __future__ import annotations

import re

IGNORE = "nbval-ignore-output"  # the tag of cells whose output nbval does not compare

# A decimal with one point (versions such as 1.9.1 have two), sign and exponent apart
DECIMAL = re.compile(r"(?<![\w.])(\d+\.\d+)(?:[eE]([-+]?\d+))?(?![\w.]*\.\d)")
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
# Math, inline code and links' targets say nothing a cell must print
NOT_PROSE = re.compile(r"\$\$.*?\$\$|\$[^$]*\$|`[^`]*`|\]\([^)]*\)", re.S)


def prose_figures(markdown: str) -> list[str]:
    """The decimal figures of ``markdown``, as written (without sign)."""
    text = NOT_PROSE.sub(" ", markdown)
    return [m.group(0) for m in DECIMAL.finditer(text)]


def printed_numbers(nb) -> list[float]:
    """Every number in a notebook's code and in the text outputs that nbval compares."""
    texts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        texts.append(cell.source)
        if IGNORE in cell.metadata.get("tags", []):
            continue  # its output varies from run to run
        for out in cell.get("outputs", []):
            texts.append(out.get("text", ""))
            data = out.get("data", {})
            texts.append(data.get("text/plain", ""))
            texts.append(data.get("text/html", ""))
            texts.append(data.get("text/markdown", ""))
    return [abs(float(n)) for t in texts for n in NUMBER.findall(t)]


def shown(figure: str, numbers: list[float]) -> bool:
    """Whether some number rounds to ``figure`` at the precision it is written with."""
    mantissa, _, exponent = figure.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) - int(exponent or 0)
    value = float(figure)
    tolerance = 0.5 * 10.0 ** -decimals + 1e-12
    # Halfway cases round either way, as printing rounds to even or away from zero
    return any(abs(n - value) <= tolerance for n in numbers)


def unshown(markdown: str, numbers: list[float]) -> list[str]:
    """The figures of ``markdown`` that none of ``numbers`` shows."""
    return [figure for figure in prose_figures(markdown) if not shown(figure, numbers)]


def unprinted(nb) -> list[str]:
    """The figures in the markdown cells of ``nb`` that neither its code nor an output nbval
    compares shows, with their cell."""
    numbers = printed_numbers(nb)
    return [f"cell {i}: {figure}" for i, cell in enumerate(nb.cells)
            if cell.cell_type == "markdown" for figure in unshown(cell.source, numbers)]
