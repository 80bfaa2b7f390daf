"""The command line refuses bad values in one line naming the option, with exit status 2."""

import subprocess
import sys

import pytest

from d2lbn import __main__ as cli
from d2lbn.lab import recheck, runner

BAD = [
    (["run", "--jobs", "0"], "argument --jobs/-j: must be at least 1, got 0"),
    (["run", "--jobs", "two"], "argument --jobs/-j: not a whole number: 'two'"),
    (["run", "99"], "no such notebook: 99"),
    (["train", "--num-epochs", "0"], "argument --num-epochs: must be at least 1, got 0"),
    (["train", "--lr", "-1"], "argument --lr: must be a positive number, got -1"),
    (["train", "--lr", "inf"], "argument --lr: must be a positive number, got inf"),
    (["train", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["train", "--norm", "foo"], "argument --norm: invalid choice: 'foo'"),
    (["train", "--num-train", "0"], "argument --num-train: must be at least 1, got 0"),
    (["train", "--seed", "-1"], "argument --seed: must be at least 0, got -1"),
    (["train", "--seed", str(2 ** 32)], "argument --seed: must be below 2**32"),
    (["train", "--workers", "0"], "argument --workers: must be at least 1, got 0"),
    (["train", "--workers", "1", "--sync-bn"], "--sync-bn needs --workers 2 or more"),
    (["train", "--epochs", "3"], "unrecognized arguments: --epochs 3"),
    (["recheck", "12", "--isa", "AVX3"], "argument --isa: invalid choice: 'AVX3'"),
    (["recheck", "12", "--jobs", "0"], "argument --jobs/-j: must be at least 1, got 0"),
    (["recheck", "12", "--jobs", "two"], "argument --jobs/-j: not a whole number: 'two'"),
    (["recheck"], "the following arguments are required: notebooks"),
    (["recheck", "99"], "no such notebook: 99"),
]


@pytest.fixture
def nothing_runs(monkeypatch):
    from d2lbn import data

    fail = lambda *a, **k: pytest.fail("ran")
    for module, name in ((runner, "run_all"), (data, "load_data_fashion_mnist"),
                         (recheck, "choose")):
        monkeypatch.setattr(module, name, fail)


@pytest.mark.parametrize("argv, message", BAD)
def test_bad_values_end_in_one_line_naming_the_option(argv, message, capsys, nothing_runs):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"python -m d2lbn {argv[0]}: error: ") and message in last, err


def test_a_bad_job_count_in_the_environment_is_refused_before_running(capsys, monkeypatch,
                                                                      nothing_runs):
    monkeypatch.setenv("D2LBN_JOBS", "abc")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "01"])
    assert exit_.value.code == 2 and "D2LBN_JOBS must be a positive integer" in \
        capsys.readouterr().err.strip().splitlines()[-1]


def test_good_values_pass_the_checks(monkeypatch):
    seen = {}
    monkeypatch.setattr(runner, "run_all", lambda paths, jobs: seen.update(jobs=jobs))
    assert cli.main(["run", "01", "--jobs", "3"]) == 0 and seen == {"jobs": 3}
    monkeypatch.setattr(recheck, "main", lambda argv: seen.update(recheck=argv) or 0)
    assert cli.main(["recheck", "12", "16", "--isa", "SSE41"]) == 0
    assert seen["recheck"] == ["12", "16", "--isa", "SSE41"]
    assert cli.seed(str(2 ** 32 - 1)) == 2 ** 32 - 1 and cli.positive_float("1e-3") == 1e-3


def test_the_module_exits_with_status_2_in_a_subprocess():
    out = subprocess.run([sys.executable, "-m", "d2lbn", "train", "--num-epochs", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines()[-1] == (
        "python -m d2lbn train: error: argument --num-epochs: must be at least 1, got 0")
