"""Claims as code: a difference between two settings over seeds, its 95% interval, a verdict.

A notebook names itself once (``lab.claims.start("12_exercise_research_ideas")``), then
states each answer as ``lab.claim(text, a, b, names=("BN", "no BN"))``: the claim is
that ``a − b > 0`` (``expect=">"``), ``< 0`` (``"<"``), or that ``|a − b| < within``.
Seeds that both settings ran pair the runs (a paired t interval on the per-seed
differences); otherwise the interval is Welch's. The verdict is *holds* when the
interval lies on the claimed side, *reversed* when it lies on the other, else
*undecided with n seeds*. Every claim goes to ``results/claims/<notebook>.json``;
``figure()`` draws a notebook's claims at a glance.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from .records import results_dir, write_atomic

LEVEL = 0.95
# How a timing claim's text starts: it measures this machine under its load at the time,
# which a re-run on another float path does not reproduce (recheck lists it, fails on none)
TIMING = "Timing, "
_current: str | None = None


# -- Student's t, without SciPy (not a dependency on every Python we support) ------------------

def _betacf(a: float, b: float, x: float) -> float:
    # Continued fraction of the incomplete beta function, evaluated by Lentz's method
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 1000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            return f
    raise ArithmeticError(f"incomplete beta did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"betainc needs a, b > 0 and 0 <= x <= 1, got {a}, {b}, {x}")
    if x in (0.0, 1.0):
        return x
    # The fraction converges fast below the mean of the distribution; above it, use symmetry
    if x > (a + 1) / (a + b + 2):
        return 1.0 - betainc(b, a, 1.0 - x)
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    return math.exp(log_front) * _betacf(a, b, x) / a


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom (``df`` > 0, not only whole)."""
    if df <= 0:
        raise ValueError(f"df must be positive, got {df}")
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom, to about 1e-12."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie strictly between 0 and 1, got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, 2.0
    while t_sf(hi, df) > 1.0 - p:
        lo, hi = hi, 2 * hi
    # Bisection: the tail falls monotonically in t
    while hi - lo > 1e-13 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_sf(mid, df) > 1.0 - p else (lo, mid)
    return (lo + hi) / 2


# -- the claim ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Claim:
    """One claim about ``a − b``: its data, interval and verdict (as recorded)."""

    text: str
    names: list[str]
    expect: str  # ">": a − b > 0; "<": a − b < 0; "within": |a − b| < within
    within: float | None
    metric: str | None
    paired: bool
    seeds_a: list[int]
    seeds_b: list[int]
    a: list[float]
    b: list[float]
    diff: float
    low: float | None  # None: no interval (one seed)
    high: float | None
    df: float | None
    verdict: str  # "holds", "reversed", or "undecided with n seeds"
    digits: int = 3

    def line(self) -> str:
        """The claim in two lines: its text, then difference, interval, seeds and verdict."""
        d = self.digits
        what = f"{self.names[0]} − {self.names[1]}"
        if self.metric:
            what += f" ({self.metric})"
        if self.expect == "within":
            side = f"expected within ±{self.within:.{d}f}"
        else:
            side = f"expected {self.expect} 0"
        ci = ("no interval" if self.low is None else
              f"{LEVEL:.0%} CI [{self.low:+.{d}f}, {self.high:+.{d}f}]")
        if self.paired:
            seeds = f"paired over seeds {_seeds(self.seeds_a)}"
        else:
            seeds = f"Welch, seeds {_seeds(self.seeds_a)} against {_seeds(self.seeds_b)}"
        return (f"{self.text}\n  {what} = {self.diff:+.{d}f}, {ci}, {side}; {seeds} "
                f"-> {self.verdict}")

    def _ipython_display_(self):
        # claim() has printed the lines already; a trailing lab.claim(...) shows nothing more
        pass


def _seeds(seeds: list[int]) -> str:
    return ", ".join(map(str, seeds))


def _by_seed(values, metric: str | None, seeds: Sequence[int] | None) -> dict[int, float]:
    if isinstance(values, Mapping):
        return {int(s): float(v) for s, v in values.items()}
    values = list(values)
    if values and hasattr(values[0], "final"):  # training Histories: one per seed
        if metric is None:
            raise ValueError("claim() on training runs needs metric=, e.g. 'test_acc'")
        return {int(h.seed): float(h.final()[metric]) for h in values}
    seeds = range(len(values)) if seeds is None else seeds
    if len(seeds) != len(values):
        raise ValueError(f"{len(values)} values but {len(seeds)} seeds")
    return {int(s): float(v) for s, v in zip(seeds, values)}


def interval(a: Sequence[float], b: Sequence[float], paired: bool, level: float = LEVEL):
    """``(mean a − mean b, low, high, df)``: Student's t interval, paired or Welch's.

    ``low``, ``high`` and ``df`` are None when the seeds give no interval (one run).
    """
    if paired:
        if len(a) != len(b):
            raise ValueError("paired values need as many of a as of b")
        d = [x - y for x, y in zip(a, b)]
        diff = statistics.fmean(d)
        if len(d) < 2:
            return diff, None, None, None
        df = len(d) - 1
        se = statistics.stdev(d) / math.sqrt(len(d))
    else:
        diff = statistics.fmean(a) - statistics.fmean(b)
        if len(a) < 2 or len(b) < 2:
            return diff, None, None, None
        va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
        se = math.sqrt(va + vb)
        # Welch–Satterthwaite; with no spread in either, the pooled count stands in
        df = ((va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
              if se > 0 else len(a) + len(b) - 2)
    half = t_quantile((1 + level) / 2, df) * se
    return diff, diff - half, diff + half, df


def verdict(low: float | None, high: float | None, expect: str = ">",
            within: float | None = None, n: int | str = "") -> str:
    """``holds``, ``reversed`` or ``undecided with n seeds`` for an interval and a claim."""
    undecided = f"undecided with {n} seed{'' if n == 1 else 's'}"
    if low is None:
        return undecided
    if expect == "within":
        if -within < low and high < within:
            return "holds"
        return "reversed" if low >= within or high <= -within else undecided
    sign = {">": 1, "<": -1}[expect]
    if sign * low > 0 and sign * high > 0:
        return "holds"
    if sign * low < 0 and sign * high < 0:
        return "reversed"
    return undecided


def start(notebook: str) -> None:
    """Name the notebook whose claims follow, and empty its claims file."""
    global _current
    _current = notebook
    # Returns nothing, so that a setup cell ending with it shows no scratch path
    write_atomic(claims_path(notebook), "[]\n")


def claims_path(notebook: str) -> Path:
    """``results/claims/<notebook>.json`` (under ``results/quick`` in quick mode)."""
    return results_dir() / "claims" / f"{notebook}.json"


def claim(text: str, a, b, *, names: Sequence[str] = ("a", "b"), expect: str = ">",
          within: float | None = None, metric: str | None = None, paired: bool | None = None,
          seeds: Sequence[int] | None = None, digits: int = 3,
          notebook: str | None = None) -> Claim:
    """State that ``a − b`` is ``> 0`` (``expect=">"``), ``< 0`` (``"<"``) or within
    ``±within``; print the difference, its 95% interval, the seeds and the verdict, and
    record it in the notebook's claims file.

    ``a``, ``b``: values by seed (a dict), a list of values (seeds 0, 1, ... or ``seeds``),
    or training runs (``History``, one per seed, with ``metric``). ``paired``: by default,
    paired when both ran the same seeds.
    """
    if within is not None:
        if within <= 0:
            raise ValueError(f"within must be positive, got {within}")
        expect = "within"
    elif expect not in (">", "<"):
        raise ValueError(f"expect must be '>' or '<' (or give within=), got {expect!r}")
    notebook = notebook or _current
    if notebook is None:
        raise ValueError("call lab.claims.start('<notebook>') first, or give notebook=")
    va, vb = _by_seed(a, metric, seeds), _by_seed(b, metric, seeds)
    if not va or not vb:
        raise ValueError("claim() needs at least one value on each side")
    same = sorted(va) == sorted(vb)
    if paired and not same:
        raise ValueError(f"paired needs the same seeds on both sides, got {sorted(va)} "
                         f"and {sorted(vb)}")
    paired = same if paired is None else paired
    seeds_a, seeds_b = sorted(va), sorted(vb)
    xs, ys = [va[s] for s in seeds_a], [vb[s] for s in seeds_b]
    diff, low, high, df = interval(xs, ys, paired)
    n = len(xs) if paired or len(xs) == len(ys) else f"{len(xs)} and {len(ys)}"
    result = Claim(text=text, names=list(names), expect=expect, within=within, metric=metric,
                   paired=paired, seeds_a=seeds_a, seeds_b=seeds_b, a=xs, b=ys, diff=diff,
                   low=low, high=high, df=df, verdict=verdict(low, high, expect, within, n),
                   digits=digits)
    print(result.line())
    _save(notebook, result)
    return result


def _save(notebook: str, result: Claim) -> None:
    path = claims_path(notebook)
    kept = [c for c in (json.loads(path.read_text()) if path.exists() else [])
            if c["text"] != result.text]  # a cell run again replaces its claim
    kept.append(dataclasses.asdict(result))
    write_atomic(path, json.dumps(kept, indent=1) + "\n")


def load(notebook: str, folder: Path | None = None) -> list[Claim]:
    """The claims a notebook recorded (in ``folder``, by default the results folder)."""
    path = (folder / "claims" / f"{notebook}.json") if folder else claims_path(notebook)
    if not path.exists():
        raise FileNotFoundError(f"no claims recorded at {path}")
    return [Claim(**c) for c in json.loads(path.read_text())]


COLORS = {"holds": "tab:green", "reversed": "tab:red"}


def figure(notebook: str | None = None, claims: list[Claim] | None = None):
    """A notebook's claims at a glance: per claim, each seed's values of a and b (left),
    and the difference a − b with its 95% interval and verdict (right, green holds, red
    reversed, grey undecided; dots: per-seed differences when paired)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if claims is None:
        claims = load(notebook or _current)
    if not claims:
        raise ValueError("no claims to draw")
    fig, axes = plt.subplots(len(claims), 2, figsize=(9, 1.3 * len(claims) + 0.4),
                             squeeze=False)
    for (left, right), c in zip(axes, claims):
        color = COLORS.get(c.verdict, "tab:gray")
        if c.paired:
            for x, y in zip(c.a, c.b):
                left.plot([x, y], [1, 0], color="lightgray", lw=0.8, zorder=1)
        left.scatter(c.a, [1] * len(c.a), color="tab:blue", s=18, zorder=2)
        left.scatter(c.b, [0] * len(c.b), color="tab:orange", s=18, zorder=2)
        left.set(yticks=[0, 1], yticklabels=[c.names[1], c.names[0]], ylim=(-0.6, 1.6))
        # The claim heads its row: it may run on above the right panel, which has no
        # title, so it stays out of the layout instead of squeezing the panels
        left.set_title(c.text, fontsize="small", loc="left").set_in_layout(False)
        if c.metric:
            left.set_xlabel(c.metric, fontsize="small")
        if c.paired and len(c.a) > 1:
            right.scatter([x - y for x, y in zip(c.a, c.b)], [0] * len(c.a), color=color,
                          s=10, alpha=0.5, zorder=2)
        if c.low is not None:
            right.errorbar([c.diff], [0], xerr=[[c.diff - c.low], [c.high - c.diff]],
                           fmt="o", color=color, capsize=4, zorder=3)
        else:
            right.plot([c.diff], [0], "o", color=color, zorder=3)
        if c.expect == "within":
            right.axvspan(-c.within, c.within, color="tab:green", alpha=0.1)
        right.axvline(0, color="black", lw=0.8, ls="--")
        right.set(yticks=[], ylim=(-1, 1))
        right.set_xlabel(f"{c.names[0]} − {c.names[1]}: {c.verdict}", fontsize="small",
                         color=color)
        for ax in (left, right):
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            ax.grid(alpha=0.3, axis="x")
            ax.tick_params(labelsize="small")
    fig.tight_layout(w_pad=3)  # room between the panels' outer tick labels
    return fig
