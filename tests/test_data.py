"""Fashion-MNIST loading: search order, verification of every file, DataLoaders, command line.

Every test builds small IDX files in tmp_path; none reads the real data or the network.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import subprocess
from pathlib import Path

import numpy as onp
import pytest

import d2lbn.data as data
from d2lbn.lab import mode

N_TRAIN, N_TEST = 32, 16


def idx_images(X: onp.ndarray, count: int | None = None, magic: int = data.IMAGES_MAGIC) -> bytes:
    """An IDX image file; ``count`` overrides the header's item count."""
    n, rows, cols = X.shape
    return struct.pack(">IIII", magic, n if count is None else count, rows, cols) + X.tobytes()


def idx_labels(y: onp.ndarray) -> bytes:
    """An IDX label file."""
    return struct.pack(">II", data.LABELS_MAGIC, len(y)) + y.astype(onp.uint8).tobytes()


def write(folder: Path, name: str, content: bytes) -> Path:
    """Write ``content`` gzipped as ``folder/name.gz``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.gz"
    path.write_bytes(gzip.compress(content))
    return path


def make_set(folder: Path, seed: int = 0) -> tuple[dict, data.Spec]:
    """A valid small Fashion-MNIST look-alike: the raw arrays per split and its Spec."""
    rng = onp.random.default_rng(seed)
    raw, sha1 = {}, []
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        X = rng.integers(0, 256, (n, 28, 28), dtype=onp.uint8)
        y = rng.integers(0, 10, n, dtype=onp.uint8)
        raw[split] = (X, y)
        images, labels = data.FILES[split]
        for name, content in ((images, idx_images(X)), (labels, idx_labels(y))):
            write(folder, name, content)
            sha1.append((name, hashlib.sha1(content).hexdigest()))
    return raw, data.Spec(train=N_TRAIN, test=N_TEST, sha1=tuple(sha1))


SPEC = data.Spec(train=N_TRAIN, test=N_TEST)  # the small sets, checksums not checked


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real data, no network, no quick mode, and a fresh parse cache in every test."""
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.delenv(mode.QUICK_ENV, raising=False)
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "mxnet"))
    monkeypatch.setattr(data, "SYSTEM_DIRS", (tmp_path / "sys1", tmp_path / "sys2"))

    def offline(folder):
        raise ConnectionError("no network in tests")

    monkeypatch.setattr(data, "_download", offline)
    data._verified.cache_clear()
    yield
    data._verified.cache_clear()


def epoch(loader) -> tuple[onp.ndarray, onp.ndarray]:
    """All images and labels of one pass over ``loader``, as NumPy arrays."""
    batches = [(X.asnumpy(), y.asnumpy()) for X, y in loader]
    return onp.concatenate([X for X, _ in batches]), onp.concatenate([y for _, y in batches])


# ---------------------------------------------------------------- DataLoaders

def test_loaders_serve_the_files(tmp_path):
    raw, spec = make_set(tmp_path / "d")
    onp.random.seed(0)  # Gluon's RandomSampler shuffles with NumPy's global generator
    train_iter, test_iter = data.load_data_fashion_mnist(8, root=tmp_path / "d", spec=spec)
    X, y = next(iter(test_iter))
    assert X.shape == (8, 1, 28, 28) and X.dtype == onp.float32 and y.shape == (8,)
    assert type(X).__module__.startswith("mxnet.numpy")
    X_test, y_test = epoch(test_iter)  # not shuffled: file order
    onp.testing.assert_array_equal(X_test, raw["test"][0][:, None] / onp.float32(255))
    onp.testing.assert_array_equal(y_test, raw["test"][1])
    assert 0 <= X_test.min() and X_test.max() <= 1
    X_train, y_train = epoch(train_iter)
    assert len(y_train) == N_TRAIN
    pixels = onp.rint(X_train[:, 0] * 255).astype(onp.uint8)
    order = [int(onp.flatnonzero((raw["train"][0] == x).all(axis=(1, 2)))[0])
             for x in pixels]  # where each served image sits in the file
    assert sorted(order) == list(range(N_TRAIN)) and order != list(range(N_TRAIN))
    onp.testing.assert_array_equal(y_train, raw["train"][1][order])


def test_resize(tmp_path):
    _, spec = make_set(tmp_path)
    train_iter, test_iter = data.load_data_fashion_mnist(5, resize=32, root=tmp_path, spec=spec)
    X, _ = next(iter(train_iter))
    assert X.shape == (5, 1, 32, 32) and X.dtype == onp.float32
    assert 0 <= float(X.min()) and float(X.max()) <= 1
    assert len(epoch(test_iter)[1]) == N_TEST


def test_transform_and_num_train(tmp_path):
    raw, spec = make_set(tmp_path)
    _, test_iter = data.load_data_fashion_mnist(8, root=tmp_path, spec=spec,
                                                transform=lambda X: 1 - X)
    X_test, _ = epoch(test_iter)
    onp.testing.assert_allclose(X_test, 1 - raw["test"][0][:, None] / onp.float32(255),
                                atol=1e-7)
    train_iter, _ = data.load_data_fashion_mnist(8, root=tmp_path, spec=spec, num_train=10)
    assert len(epoch(train_iter)[1]) == 10
    with pytest.raises(ValueError, match="num_train"):
        data.load_data_fashion_mnist(8, root=tmp_path, spec=spec, num_train=0)
    with pytest.raises(ValueError, match="transform"):
        data.load_data_fashion_mnist(8, root=tmp_path, spec=spec, transform="invert")


@pytest.mark.parametrize("kwargs", [dict(batch_size=0), dict(batch_size=2.5),
                                    dict(batch_size=True), dict(batch_size=4, resize=0),
                                    dict(batch_size=4, resize="32")])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="positive integer"):
        data.load_data_fashion_mnist(**kwargs)


def test_quick_mode_slices_in_the_lab_only(tmp_path, monkeypatch, capsys):
    raw, spec = make_set(tmp_path)
    monkeypatch.setenv(mode.QUICK_ENV, "1")
    monkeypatch.setattr(mode, "QUICK_TRAIN", 10)
    monkeypatch.setattr(mode, "QUICK_TEST", 4)
    monkeypatch.setattr(mode, "_announced", False)
    train_iter, test_iter = data.load_data_fashion_mnist(3, root=tmp_path, spec=spec)
    assert len(epoch(train_iter)[1]) == len(raw["train"][1]) > 10  # the library ignores the mode
    train_iter, test_iter = mode.load_data(3, root=tmp_path, spec=spec)
    assert len(epoch(train_iter)[1]) == 10
    onp.testing.assert_array_equal(epoch(test_iter)[1], raw["test"][1][:4])
    assert "quick mode" in capsys.readouterr().out
    train_iter, _ = mode.load_data(3, num_train=6, root=tmp_path, spec=spec)
    assert len(epoch(train_iter)[1]) == 6


def test_num_test_keeps_the_first_test_examples(tmp_path):
    raw, spec = make_set(tmp_path)
    _, test_iter = data.load_data_fashion_mnist(3, root=tmp_path, spec=spec, num_test=5)
    onp.testing.assert_array_equal(epoch(test_iter)[1], raw["test"][1][:5])


def test_text_labels():
    assert data.text_labels([0, 9, 3]) == ["t-shirt", "ankle boot", "dress"]


# ---------------------------------------------------------------- verification of each file

def corrupt(folder: Path, problem: str) -> str:
    """Replace one file of a valid set in ``folder`` by a broken one; return the file's name."""
    rng = onp.random.default_rng(1)
    X = rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=onp.uint8)
    images, labels = data.FILES["train"]
    if problem == "truncated":
        write(folder, images, idx_images(X)[:1000])
    elif problem == "magic":
        write(folder, images, idx_images(X, magic=2049))
    elif problem == "count":
        write(folder, images, idx_images(X[:-1]))
    elif problem == "rows":
        write(folder, images, idx_images(X[:, :27]))
    elif problem == "header says more":
        write(folder, images, idx_images(X[:-1], count=N_TRAIN))
    elif problem == "label":
        write(folder, labels, idx_labels(onp.full(N_TRAIN, 10)))
        return labels
    elif problem == "gzip":
        (folder / f"{images}.gz").write_bytes(b"this is not gzip")
    elif problem == "missing":
        (folder / f"{images}.gz").unlink()
    return images


@pytest.mark.parametrize("problem, message", [
    ("truncated", "truncated: header says 32 images of 28x28 = 25088 bytes, found 984"),
    ("header says more", "truncated: header says 32 images of 28x28 = 25088 bytes, found 24304"),
    ("magic", "bad magic number 2049, expected 2051"),
    ("count", "holds 31 images, expected 32"),
    ("rows", "images are 27x28, expected 28x28"),
    ("label", "label 10 at index 0 is out of range 0..9"),
    ("gzip", "not a readable gzip file"),
    ("missing", "missing train-images-idx3-ubyte.gz"),
])
def test_bad_file_is_named(tmp_path, problem, message):
    make_set(tmp_path)
    name = corrupt(tmp_path, problem)
    with pytest.raises(data.DataError, match="Fix:") as error:
        data.load_data_fashion_mnist(4, root=tmp_path, spec=SPEC)
    assert message in str(error.value)
    assert (str(tmp_path / name) if problem != "missing" else str(tmp_path)) in str(error.value)


def test_checksum_mismatch(tmp_path):
    _, spec = make_set(tmp_path)
    make_set(tmp_path, seed=1)  # same structure, other bytes
    with pytest.raises(data.DataError, match="checksum mismatch") as error:
        data.locate(spec, root=tmp_path)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in str(error.value)


def test_real_spec_rejects_a_small_set(tmp_path):
    make_set(tmp_path)
    with pytest.raises(data.DataError, match="holds 32 images, expected 60000"):
        data.locate(root=tmp_path)


def test_plain_files_are_accepted(tmp_path):
    raw, spec = make_set(tmp_path)
    for gz in tmp_path.glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    _, test_iter = data.load_data_fashion_mnist(N_TEST, root=tmp_path, spec=spec)
    onp.testing.assert_array_equal(epoch(test_iter)[1], raw["test"][1])


def test_cache_rereads_a_replaced_file(tmp_path):
    _, spec = make_set(tmp_path)
    data.locate(spec, root=tmp_path)
    corrupt(tmp_path, "truncated")
    with pytest.raises(data.DataError, match="truncated"):
        data.locate(spec, root=tmp_path)


# ---------------------------------------------------------------- search order

def test_first_valid_candidate_wins(tmp_path):
    make_set(tmp_path / "sys2")
    assert data.locate(SPEC) == (tmp_path / "sys2", "debian package", False)
    make_set(tmp_path / "sys1")
    assert data.locate(SPEC).path == tmp_path / "sys1"
    make_set(data.mxnet_cache())
    assert data.locate(SPEC) == (tmp_path / "mxnet" / "datasets" / "fashion-mnist",
                                 "mxnet cache", False)


def test_env_wins(tmp_path, monkeypatch):
    make_set(data.mxnet_cache())
    make_set(tmp_path / "mine")
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "mine"))
    assert data.locate(SPEC) == (tmp_path / "mine", "D2LBN_DATA", True)


def test_bad_implicit_candidate_is_skipped_with_a_warning(tmp_path):
    make_set(data.mxnet_cache())
    corrupt(data.mxnet_cache(), "truncated")
    make_set(tmp_path / "sys2")
    with pytest.warns(UserWarning, match="skipping mxnet cache .*train-images.*truncated"):
        assert data.locate(SPEC).path == tmp_path / "sys2"


def test_bad_explicit_choice_is_an_error(tmp_path, monkeypatch):
    make_set(tmp_path / "sys1")
    make_set(tmp_path / "mine")
    corrupt(tmp_path / "mine", "magic")
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "mine"))
    with pytest.raises(data.DataError, match="bad magic number"):
        data.locate(SPEC)
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "empty"))
    with pytest.raises(data.DataError, match="missing"):
        data.locate(SPEC)


def test_nothing_found_lists_every_way(tmp_path):
    with pytest.raises(data.DataError) as error:
        data.load_data_fashion_mnist(4, spec=SPEC)
    message = str(error.value)
    for part in ("no network in tests", "D2LBN_DATA", "apt-get install dataset-fashion-mnist",
                 "make data", "python -m d2lbn data --fetch", str(tmp_path / "sys1"),
                 str(data.mxnet_cache())):
        assert part in message


def test_download_goes_to_the_mxnet_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_download", lambda folder: make_set(folder))
    assert data.locate(SPEC) == (data.mxnet_cache(), "download", False)


# ---------------------------------------------------------------- fetch and the command line

@pytest.fixture
def small_spec(monkeypatch):
    """Make the command line, which always uses FASHION_MNIST, accept the small sets."""
    monkeypatch.setattr(data, "FASHION_MNIST", SPEC)


def test_main_describes_the_source(tmp_path, small_spec, capsys):
    make_set(tmp_path / "sys1")
    assert data.main([]) == 0
    assert f"{tmp_path / 'sys1'} (debian package)" in capsys.readouterr().out


def test_main_without_data_fails_cleanly(capsys):
    assert data.main([]) == 1
    assert "python -m d2lbn data --fetch" in capsys.readouterr().err


def test_fetch_with_data_present_downloads_nothing(tmp_path, small_spec, monkeypatch, capsys):
    make_set(tmp_path / "sys1")
    monkeypatch.setattr(data, "_download", pytest.fail)
    assert data.main(["--fetch"]) == 0
    assert "already present" in capsys.readouterr().out


def test_fetch_downloads_and_runs_no_command(monkeypatch):
    # Installing the Debian package is make's job (`make data`), not the library's
    def no_command(*args, **kwargs):
        raise AssertionError(f"library code ran a command: {args}")

    monkeypatch.setattr(subprocess, "run", no_command)
    monkeypatch.setattr(subprocess, "Popen", no_command)
    monkeypatch.setattr(data, "_download", lambda folder: make_set(folder))
    assert data.fetch(SPEC) == data.mxnet_cache()
