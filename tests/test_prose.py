"""Every figure in a notebook's prose is printed by one of its cells."""

import nbformat
import pytest

from d2lbn.lab import prose, runner


def notebook(markdown: str, *outputs: str, code: str = "x = 1"):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(code)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=t) for t in outputs]
    nb.cells = [cell, nbformat.v4.new_markdown_cell(markdown)]
    return nb


def test_figures_in_prose_but_not_in_math_code_links_or_versions():
    text = ("Test accuracy 0.847 ± 0.022, 8.4× faster, from −2.72 to 0.72; $\\epsilon = 0.001$, "
            "`lr=0.5`, [d2l](https://d2l.ai/v1.0.3), mxnet 1.9.1, 3 seeds, 1.2e-05.")
    assert prose.prose_figures(text) == ["0.847", "0.022", "8.4", "2.72", "0.72", "1.2e-05"]


def test_a_figure_is_shown_at_the_precision_written():
    numbers = prose.printed_numbers(notebook("", "acc 0.84749 | ratio 8.42x | -2.7235"))
    assert prose.shown("0.847", numbers) and prose.shown("0.85", numbers)
    assert prose.shown("8.4", numbers) and prose.shown("2.72", numbers)
    assert not prose.shown("0.848", numbers) and not prose.shown("8.5", numbers)


def test_a_stale_number_is_caught():
    fresh = notebook("Test accuracy 0.847 at lr 0.01.", "test acc 0.847\n", code="lr = 0.01")
    assert prose.unprinted(fresh) == []
    stale = notebook("Test accuracy 0.816 at lr 0.01.", "test acc 0.847\n", code="lr = 0.01")
    assert prose.unprinted(stale) == ["cell 1: 0.816"]


def test_a_figure_only_an_ignored_output_shows_is_run_dependent():
    nb = notebook("Test accuracy 0.847.", "test acc 0.847\n")
    assert prose.unprinted(nb) == []
    nb.cells[0].metadata["tags"] = [runner.IGNORE, "varies-full-run"]
    assert prose.unprinted(nb) == ["cell 1: 0.847"]
    assert prose.IGNORE == runner.IGNORE


@pytest.mark.parametrize("path", runner.notebooks(), ids=lambda p: p.stem[:2])
def test_committed_prose_quotes_only_figures_any_rerun_shows(path):
    nb = nbformat.read(path, as_version=4)
    assert prose.unprinted(nb) == []


@pytest.mark.parametrize("path", [p for p in runner.notebooks()
                                  if "_exercise_" in p.stem or "_practice_" in p.stem],
                         ids=lambda p: p.stem[:2])
def test_exercises_open_with_a_short_answer(path):
    # Issue 22: the question, then an answer of at most 100 words that a student can take away
    opening = [c.source for c in nbformat.read(path, as_version=4).cells[:3]
               if c.cell_type == "markdown" and "**Short answer.**" in c.source]
    assert opening, "no **Short answer.** in the first three cells"
    answer = opening[0].split("**Short answer.**")[1].split("\n\n")[0]
    assert len(answer.split()) <= 100
