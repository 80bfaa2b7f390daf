"""recheck: notebooks re-run on another float path, into scratch; flipped claims fail it."""

import json
import os
import re

import pytest
from helpers import write_notebook

from d2lbn.lab import claims, floatpath, recheck, records

A = [0.90, 0.95, 0.92]


def fake_path(env=None):
    """A float path without the probe: oneDNN's ISA follows DNNL_MAX_CPU_ISA, as it does."""
    env = {**{k: os.environ.get(k) for k in floatpath.ENV}, **(env or {})}
    isa = {"SSE41": "Intel SSE4.1", "AVX2": "Intel AVX2", "AVX512_CORE": "Intel AVX-512",
           None: "Intel AVX-512"}[env.get("DNNL_MAX_CPU_ISA")]
    if env.get("MXNET_MKLDNN_ENABLED") == "0":
        isa = None
    return {"cpu": "Fake CPU", "cpu_flags": ["avx2", "avx512f", "sse4_1"], "mxnet": "1.9.1",
            "onednn": {"version": "2.4.4", "isa": isa, "built": True},
            "openblas": {"core": "Zen"}, "env": {k: v for k, v in env.items() if v}}


# The notebook's claim 'a ahead' holds on AVX2 and AVX-512, and not on SSE4.1
FLIP = """
import os
from d2lbn.lab import claims
claims.start("nb_flip")
sse = os.environ.get("DNNL_MAX_CPU_ISA") == "SSE41"
claims.claim("a ahead", {A}, [0.95, 0.5, 0.9] if sse else [0.1, 0.2, 0.15])
claims.claim("a ahead of c", {A}, [0.8, 0.5, 0.9])
""".replace("{A}", repr(A))
STABLE = f"""
from d2lbn.lab import claims
claims.start("nb_stable")
claims.claim("a above b", {A}, [0.1, 0.2, 0.15])
"""


@pytest.fixture
def committed(tmp_path, monkeypatch):
    """Two notebooks and their committed claims from an AVX2 run, in ``tmp_path``."""
    for key in floatpath.ENV:  # the tests' own settings must not steer the re-run
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(floatpath, "float_path", fake_path)
    monkeypatch.setattr(floatpath, "cpu", lambda: ("Fake CPU", ["avx2", "avx512f", "sse4_1"]))
    results = tmp_path / "results"
    monkeypatch.setenv(records.RESULTS_ENV, str(results))
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    paths = [write_notebook(nbs / "nb_flip.ipynb", FLIP),
             write_notebook(nbs / "nb_stable.ipynb", STABLE)]
    for source in (FLIP, STABLE):  # the committed run: AVX2, so 'a ahead' holds
        exec(source.replace("sse = os", "sse = False and os"))
    floatpath.write(results, fake_path({"DNNL_MAX_CPU_ISA": "AVX2"}))
    return paths, results


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_flipped_claim_fails_the_recheck_and_the_committed_files_stay(committed, tmp_path,
                                                                       capsys):
    paths, results = committed
    before = snapshot(tmp_path)
    code = recheck.main([*map(str, paths), "--isa", "SSE41", "--jobs", "2",
                         "--out", str(tmp_path / "scratch")])
    out = capsys.readouterr().out
    assert code == 1
    assert "[d2lbn] recheck on Fake CPU; oneDNN 2.4.4 on Intel SSE4.1" in out
    assert "[d2lbn] committed run: Fake CPU; oneDNN 2.4.4 on Intel AVX2" in out
    assert re.findall(r"^(?:FLIPPED|changed) .*$", out, re.M) == [
        "FLIPPED nb_flip: 'a ahead': holds -> undecided with 3 seeds"]
    assert "3 claims in 2 notebooks: 1 with another verdict, 1 of them decided before" in out
    # Nothing committed changed; the re-run lives in the scratch folder
    assert {p: b for p, b in snapshot(tmp_path).items() if "scratch" not in p.parts} == before
    rerun = tmp_path / "scratch" / "results"
    assert [c.verdict for c in claims.load("nb_flip", rerun)] == ["undecided with 3 seeds",
                                                                  "undecided with 3 seeds"]
    assert floatpath.read(rerun)["onednn"]["isa"] == "Intel SSE4.1"
    assert (tmp_path / "scratch" / "notebooks" / "nb_flip.ipynb").exists()


def test_the_default_path_differs_from_the_committed_one_and_stable_claims_pass(committed,
                                                                                capsys):
    paths, results = committed
    # Committed on AVX2 with AVX-512 at hand: the re-run takes AVX-512
    assert recheck.main([str(paths[1])]) == 0
    out = capsys.readouterr().out
    assert "recheck on Fake CPU; oneDNN 2.4.4 on Intel AVX-512" in out
    assert "(DNNL_MAX_CPU_ISA=AVX512_CORE)" in out
    assert "1 claims in 1 notebooks: 0 with another verdict" in out
    # The scratch folder went under the results' .tmp, which git ignores
    assert len(list((results / ".tmp").glob("recheck-*/notebooks/nb_stable.ipynb"))) == 1


def test_the_committed_path_itself_is_refused(committed, capsys):
    with pytest.raises(SystemExit) as exit_:
        recheck.main([str(committed[0][1]), "--isa", "AVX2"])
    assert exit_.value.code == 2 and "is the committed run's float path" in \
        capsys.readouterr().err.strip().splitlines()[-1]


def test_changes_lists_every_other_verdict_and_fails_only_decided_ones(tmp_path):
    def save(folder, verdicts):
        (folder / "claims").mkdir(parents=True)
        (folder / "claims" / "nb.json").write_text(json.dumps(
            [{"text": t, "verdict": v} for t, v in verdicts.items()]))

    fast, gone_fast = "Timing, this CPU: a is faster", "Timing, this CPU: b is faster"
    save(tmp_path / "old", {"h": "holds", "r": "reversed", "u": "undecided with 2 seeds",
                            "same": "holds", "gone": "holds", fast: "holds", gone_fast: "holds"})
    save(tmp_path / "new", {"h": "reversed", "r": "undecided with 2 seeds", "u": "holds",
                            "same": "holds", "added": "holds", fast: "undecided with 9 seeds"})
    found, count = recheck.changes(tmp_path / "old", tmp_path / "new", ["nb"])
    assert count == 8
    # A timing claim measures the machine's load, not the float path: listed, never failing,
    # unless the re-run no longer makes it
    assert [(c.text, c.committed, c.rerun, c.fails()) for c in found] == [
        ("h", "holds", "reversed", True), ("r", "reversed", "undecided with 2 seeds", True),
        ("u", "undecided with 2 seeds", "holds", False), ("gone", "holds", "absent", True),
        (fast, "holds", "undecided with 9 seeds", False), (gone_fast, "holds", "absent", True),
        ("added", "absent", "holds", False)]


@pytest.mark.parametrize("isa, flags, want", [
    ("Intel AVX2", ["sse4_1", "avx", "avx2", "avx512f"], {"DNNL_MAX_CPU_ISA": "AVX512_CORE"}),
    ("Intel AVX-512 with Intel DL Boost", ["sse4_1", "avx2", "avx512f"],
     {"DNNL_MAX_CPU_ISA": "AVX2"}),
    ("Intel AVX2", ["sse4_1", "avx", "avx2"], {"DNNL_MAX_CPU_ISA": "SSE41"}),
    ("Intel SSE4.1", ["sse4_1", "avx2"], {"MXNET_MKLDNN_ENABLED": "0"}),
    (None, ["sse4_1", "avx2"], {"DNNL_MAX_CPU_ISA": None}),
])
def test_other_than_picks_another_instruction_set(isa, flags, want):
    env = floatpath.other_than({"onednn": {"isa": isa}}, flags)
    assert {k: v for k, v in env.items() if k in want} == want
    assert floatpath.other_than(None, flags)["DNNL_MAX_CPU_ISA"] == "SSE41"


def test_float_path_reads_onednns_instruction_set_from_its_verbose_output():
    # SSE4.1 is the floor of every x86-64 CPU oneDNN runs its JIT kernels on
    path = floatpath.float_path({"DNNL_MAX_CPU_ISA": "SSE41", "MXNET_MKLDNN_ENABLED": None})
    assert path["onednn"]["isa"] == "Intel SSE4.1" and path["env"]["DNNL_MAX_CPU_ISA"] == "SSE41"
    assert re.fullmatch(r"\d+\.\d+\.\d+", path["onednn"]["version"])
    assert path["mxnet"] == __import__("mxnet").__version__ and path["cpu"]
    off = floatpath.float_path({"MXNET_MKLDNN_ENABLED": "0"})
    assert off["onednn"]["isa"] is None and "oneDNN off" in floatpath.describe(off)
    assert not recheck.same_path(path, off)


def test_each_notebook_keeps_the_float_path_of_its_outputs(tmp_path):
    avx2, sse = fake_path({"DNNL_MAX_CPU_ISA": "AVX2"}), fake_path({"DNNL_MAX_CPU_ISA": "SSE41"})
    floatpath.write(tmp_path, avx2, notebooks=["01_a", "02_b"])
    floatpath.write(tmp_path, sse, notebooks=["02_b"])  # a later run of 02 alone
    assert floatpath.read(tmp_path, "01_a") == avx2 and floatpath.read(tmp_path, "02_b") == sse
    assert floatpath.read(tmp_path) == sse and floatpath.read(tmp_path, "03_c") is None
    assert recheck.committed_path(tmp_path, ["01_a", "03_c"]) == avx2
    with pytest.raises(ValueError, match="different float paths"):
        recheck.committed_path(tmp_path, ["01_a", "02_b"])


def test_a_single_path_file_reads_as_the_last_run(tmp_path):
    avx2 = fake_path({"DNNL_MAX_CPU_ISA": "AVX2"})
    (tmp_path / floatpath.FILE).write_text(json.dumps(avx2))
    assert floatpath.read(tmp_path) == avx2 and floatpath.read(tmp_path, "01_a") is None
    assert recheck.committed_path(tmp_path, ["01_a"]) == avx2
