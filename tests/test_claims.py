"""Claims: Student's t quantiles, the paired and Welch intervals, verdicts, records, figures."""

import json
import math
import statistics

import matplotlib
import pytest

from d2lbn.lab import claims, mode, plot, records
from d2lbn.train import History

matplotlib.use("Agg")


@pytest.fixture
def out(tmp_path, monkeypatch):
    monkeypatch.setenv(records.RESULTS_ENV, str(tmp_path))
    claims.start("nb")
    return tmp_path


# -- t quantiles ---------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.55, 0.6, 0.9, 0.975, 0.995, 0.9995])
def test_t_quantile_matches_closed_forms_for_one_and_two_degrees(p):
    # df 1 is Cauchy: tan(pi (p - 1/2)); df 2: (2p - 1) / sqrt(2 p (1 - p))
    assert claims.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-11)
    want = (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    assert claims.t_quantile(p, 2) == pytest.approx(want, rel=1e-11)
    assert claims.t_quantile(1 - p, 2) == pytest.approx(-want, rel=1e-11)


@pytest.mark.parametrize("df, want", [(3, 3.182446), (4, 2.776445), (5, 2.570582),
                                      (10, 2.228139), (30, 2.042272)])
def test_t_quantile_matches_the_table(df, want):
    # Tabulated two-sided 95% points, six decimals
    assert claims.t_quantile(0.975, df) == pytest.approx(want, abs=6e-7)


def test_t_quantile_tends_to_the_normal():
    z = statistics.NormalDist().inv_cdf(0.975)
    assert claims.t_quantile(0.975, 1e8) == pytest.approx(z, rel=1e-7)


@pytest.mark.parametrize("df", [1, 1.7, 2, 2.5, 3, 4.2, 7, 12.3, 29, 100])
@pytest.mark.parametrize("p", [0.55, 0.8, 0.95, 0.975, 0.999])
def test_t_quantile_matches_scipy(p, df):
    stats = pytest.importorskip("scipy.stats")
    t = claims.t_quantile(p, df)
    # SciPy's ppf is itself off by up to 2e-9 relative (near the median at df 2, against
    # the closed form); its tail probability is good to about 1e-12
    assert t == pytest.approx(stats.t.ppf(p, df), rel=1e-8)
    assert stats.t.sf(t, df) == pytest.approx(1 - p, rel=1e-10)
    assert claims.t_sf(t, df) == pytest.approx(stats.t.sf(t, df), rel=1e-10)


def test_betainc_refuses_arguments_outside_its_domain():
    with pytest.raises(ValueError, match="0 <= x <= 1"):
        claims.betainc(1, 1, 1.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        claims.t_quantile(1.0, 3)


# -- intervals -------------------------------------------------------------------------------

A = [0.851, 0.862, 0.844, 0.858]
B = [0.803, 0.834, 0.812, 0.820]


def test_paired_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    diff, low, high, df = claims.interval(A, B, paired=True)
    want = stats.ttest_rel(A, B).confidence_interval(0.95)
    assert (low, high) == pytest.approx((want.low, want.high), rel=1e-9)
    assert diff == pytest.approx(statistics.fmean(A) - statistics.fmean(B)) and df == 3


def test_welch_interval_ends_are_where_scipys_welch_test_gives_p_005():
    stats = pytest.importorskip("scipy.stats")
    a, b = A, [0.80, 0.85, 0.79]
    diff, low, high, df = claims.interval(a, b, paired=False)
    assert low < diff < high
    # Shifting a by an end of the 95% interval puts it on the edge of rejection
    for end in (low, high):
        p = stats.ttest_ind([x - end for x in a], b, equal_var=False).pvalue
        assert p == pytest.approx(0.05, rel=1e-7)


def test_welch_with_equal_counts_and_spreads_has_the_pooled_degrees_of_freedom():
    # Equal n and variance: Welch's df is 2n - 2 and the interval is the pooled one
    a, b = [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]
    diff, low, high, df = claims.interval(a, b, paired=False)
    half = claims.t_quantile(0.975, 4) * math.sqrt(2 / 3)
    assert df == pytest.approx(4) and (low, high) == pytest.approx((-1 - half, -1 + half))


def test_one_seed_gives_no_interval():
    assert claims.interval([1.0], [0.5], paired=True) == (0.5, None, None, None)
    assert claims.interval([1.0, 2.0], [0.5], paired=False)[1:] == (None, None, None)


# -- verdicts --------------------------------------------------------------------------------

@pytest.mark.parametrize("low, high, expect, within, want", [
    (0.01, 0.05, ">", None, "holds"),
    (-0.05, -0.01, ">", None, "reversed"),
    (-0.01, 0.05, ">", None, "undecided with 3 seeds"),
    (-0.05, -0.01, "<", None, "holds"),
    (0.01, 0.05, "<", None, "reversed"),
    (-0.004, 0.006, "within", 0.01, "holds"),
    (0.012, 0.03, "within", 0.01, "reversed"),
    (-0.03, -0.01, "within", 0.01, "reversed"),
    (0.005, 0.02, "within", 0.01, "undecided with 3 seeds"),
    (None, None, ">", None, "undecided with 3 seeds"),
])
def test_verdict(low, high, expect, within, want):
    assert claims.verdict(low, high, expect, within, 3) == want


def test_claim_prints_difference_interval_seeds_and_verdict(out, capsys):
    c = claims.claim("BN ahead", dict(zip(range(4), A)), B, names=("BN", "none"),
                     metric="test_acc")
    text = capsys.readouterr().out
    assert c.paired and c.verdict == "holds" and c.diff > 0
    assert f"BN − none (test_acc) = +{c.diff:.3f}, 95% CI [+{c.low:.3f}, +{c.high:.3f}]" in text
    assert "paired over seeds 0, 1, 2, 3 -> holds" in text


def test_claim_reversed_undecided_and_one_seed(out):
    assert claims.claim("none ahead", A, B, expect="<").verdict == "reversed"
    assert claims.claim("n1", [0.9], [0.1]).verdict == "undecided with 1 seed"
    # Different seeds cannot pair: Welch, and the counts of both sides in the verdict
    c = claims.claim("w", A, {7: 0.8, 8: 0.9})
    assert not c.paired and c.verdict == "undecided with 4 and 2 seeds"
    with pytest.raises(ValueError, match="same seeds"):
        claims.claim("p", A, {7: 0.8, 8: 0.9}, paired=True)


def test_claim_takes_training_runs_by_their_seeds(out):
    def run(seed, acc):
        return History(lr=1, batch_size=256, num_epochs=1, seed=seed, device="cpu(0)",
                       loss=[0.5], train_acc=[acc], test_acc=[acc], examples_per_sec=[1.0])

    a = [run(s, x) for s, x in zip((3, 4, 5), A)]
    b = [run(s, x) for s, x in zip((5, 4, 3), B)]
    c = claims.claim("runs", a, b, metric="test_acc")
    # Paired by seed, not by position: seed 3 of a meets seed 3 of b (B[2])
    assert c.seeds_a == [3, 4, 5] and c.b == [B[2], B[1], B[0]]
    with pytest.raises(ValueError, match="metric"):
        claims.claim("runs", a, b)


def test_claims_are_recorded_per_notebook_and_replaced_by_text(out):
    claims.claim("first", A, B)
    claims.claim("second", A, B, within=0.1)
    claims.claim("first", B, A)  # the cell run again
    saved = json.loads((out / "claims" / "nb.json").read_text())
    assert [c["text"] for c in saved] == ["second", "first"]
    assert saved[1]["verdict"] == "reversed"
    assert [c.text for c in claims.load("nb")] == ["second", "first"]
    claims.start("nb")  # a new run of the notebook starts from none
    assert claims.load("nb") == []


def test_quick_claims_go_to_the_quick_folder(out, monkeypatch):
    monkeypatch.setenv(mode.QUICK_ENV, "1")
    claims.start("nb")
    claims.claim("q", A, B)
    assert (out / "quick" / "claims" / "nb.json").exists()
    assert json.loads((out / "claims" / "nb.json").read_text()) == []


# -- figures ---------------------------------------------------------------------------------

def test_figure_draws_each_claim_with_its_interval(out):
    claims.claim("holds", A, B, names=("BN", "none"))
    claims.claim("one seed", [0.9], [0.1])
    fig = claims.figure("nb")
    assert len(fig.axes) == 4
    right = fig.axes[1]
    assert right.get_xlabel() == "BN − none: holds"
    c = claims.load("nb")[0]
    # The interval's bar spans low to high
    segments = [seg for coll in right.collections for seg in getattr(coll, "get_segments",
                                                                      list)()]
    xs = sorted(x for seg in segments for x, _ in seg)
    assert (xs[0], xs[-1]) == pytest.approx((c.low, c.high))


def test_figure_texts_do_not_overlap(out):
    claims.claim("a claim long enough to run on past the left panel of its row, as a notebook's do",
                 A, B,
                 names=("BN", "none"), metric="test_acc")
    claims.claim("another long claim under it, with a metric of its own and a margin as well",
                 B, A,
                 names=("none", "BN"), metric="loss")
    fig = claims.figure("nb")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()

    def shown(ax):  # the tick labels drawn: those inside the axis' limits
        low, high = sorted(ax.get_xlim())
        return [t for t in ax.get_xticklabels() if low <= t.get_position()[0] <= high]

    texts = [t for ax in fig.axes
             for t in (ax.title, ax._left_title, ax.xaxis.label, *shown(ax),
                       *ax.get_yticklabels())
             if t.get_text() and t.get_visible()]
    boxes = [t.get_window_extent(renderer) for t in texts]
    for i, a in enumerate(boxes):
        for j in range(i):
            assert not a.overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())


def test_epoch_axes_have_whole_number_ticks():
    h = History(lr=1, batch_size=256, num_epochs=3, seed=0, device="cpu(0)",
                loss=[1.0, 0.5, 0.4], train_acc=[0.5] * 3, test_acc=[0.6, 0.7, 0.8],
                examples_per_sec=[1.0] * 3)
    for fig in (plot.curves({"a": [h]}), plot.lines([1, 2, 3], {"a": [h.loss]}, "epoch", "y"),
                plot.panels([1, 2, 3], {"loss": {"a": [h.loss]}}, "epoch")):
        fig.canvas.draw()
        ticks = fig.axes[0].get_xticks()
        assert len(ticks) > 1 and all(t == round(t) for t in ticks), ticks
