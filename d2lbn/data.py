"""Fashion-MNIST: find, verify, parse and serve as Gluon DataLoaders, offline first.

Search order: ``$D2LBN_DATA``, MXNet's cache, Debian's ``dataset-fashion-mnist`` package (which
``make data`` installs), and only then Gluon's download into MXNet's cache. Every file is
checked before use, and a bad one gets an error that names it and the fix.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import numbers
import os
import struct
import sys
import warnings
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as onp
from mxnet import gluon, np, npx

DATA_ENV = "D2LBN_DATA"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
SYSTEM_DIRS: tuple[Path, ...] = (DEBIAN_DIR,)
FETCH_COMMAND = "python -m d2lbn data --fetch"
INSTALL_COMMAND = "make data"

# Split -> (images file, labels file), named as published; stored gzipped (".gz") or not.
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
ROWS = COLS = 28
NUM_CLASSES = 10

# Gluon checks its download against the .gz bytes, which differ from Debian's recompressed
# files; our own check (Spec.sha1) is on the decompressed bytes, which all copies share.
_GLUON_GZ_SHA1 = {"train-images-idx3-ubyte": "0cf37b0d40ed5169c6b3aba31069a9770ac9043d",
                  "train-labels-idx1-ubyte": "236021d52f1e40852b06a4c3008d8de8aef1e40b",
                  "t10k-images-idx3-ubyte": "626ed6a7c06dd17c0eec72fa3be1740f146a2863",
                  "t10k-labels-idx1-ubyte": "17f9ab60e7257a1620f4ad76bbbaf857c3920701"}

TEXT_LABELS = ("t-shirt", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle boot")


class DataError(ValueError):
    """The data is missing or a file is not what it should be; the message says how to fix it."""


@dataclass(frozen=True)
class Spec:
    """What valid files hold: examples per split and the SHA-1 of each decompressed file."""

    train: int
    test: int
    sha1: tuple[tuple[str, str | None], ...] = ()  # (file name, hex digest); absent/None: skip

    def count(self, split: str) -> int:
        """Number of examples expected in ``split`` ("train" or "test")."""
        return self.train if split == "train" else self.test


FASHION_MNIST = Spec(train=60_000, test=10_000, sha1=(
    ("train-images-idx3-ubyte", "b9bd999c0106c9b8b4b0cefce58c9a6060f27095"),
    ("train-labels-idx1-ubyte", "4bccf37222e01638381eaa326bf730337a597267"),
    ("t10k-images-idx3-ubyte", "880056926db704f9f713097915f99da346f5b1d1"),
    ("t10k-labels-idx1-ubyte", "958122e8b4b97fd4e71eca2d08ef754ed77c3ad9")))

_FIX = (f"Fix: delete the file and run `{FETCH_COMMAND}`, point {DATA_ENV} at a folder with "
        f"valid files, or reinstall the Debian package "
        f"(`apt-get install --reinstall {DEBIAN_PACKAGE}`).")


def _bad(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}.\n{_FIX}")


# ---------------------------------------------------------------- reading and checking files

def _paths(folder: Path) -> dict[str, Path | None]:
    """Each expected file in ``folder``: the .gz if present, else the plain file, else None."""
    found: dict[str, Path | None] = {}
    for name in (*FILES["train"], *FILES["test"]):
        gz, plain = folder / f"{name}.gz", folder / name
        found[name] = gz if gz.is_file() else plain if plain.is_file() else None
    return found


def _read(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        problem = "not a readable gzip file" if path.suffix == ".gz" else "unreadable"
        raise _bad(path, f"{problem} ({e})") from None


def _parse(path: Path, data: bytes, kind: str, count: int) -> onp.ndarray:
    """Check one decompressed IDX file's header, size and labels, and return its payload."""
    magic, header = (IMAGES_MAGIC, 16) if kind == "images" else (LABELS_MAGIC, 8)
    if len(data) < header:
        raise _bad(path, f"truncated: {len(data)} bytes, shorter than the IDX header")
    found_magic, n = struct.unpack(">II", data[:8])
    if found_magic != magic:
        raise _bad(path, f"bad magic number {found_magic}, expected {magic} (IDX {kind})")
    if n != count:
        raise _bad(path, f"holds {n} {kind}, expected {count}")
    shape: tuple[int, ...] = (n,)
    if kind == "images":
        rows, cols = struct.unpack(">II", data[8:16])
        if (rows, cols) != (ROWS, COLS):
            raise _bad(path, f"images are {rows}x{cols}, expected {ROWS}x{COLS}")
        shape = (n, 1, rows, cols)  # one channel, so the file's row order is already NCHW
    size, found = int(onp.prod(shape)), len(data) - header
    if found != size:  # a short file must never pass as a smaller dataset
        what = f"{n} images of {ROWS}x{COLS}" if kind == "images" else f"{n} labels"
        problem = "truncated" if found < size else "too long"
        raise _bad(path, f"{problem}: header says {what} = {size} bytes, found {found}")
    array = onp.frombuffer(data, onp.uint8, offset=header).reshape(shape)
    if kind == "labels" and array.max(initial=0) >= NUM_CLASSES:
        i = int(onp.argmax(array >= NUM_CLASSES))
        raise _bad(path, f"label {array[i]} at index {i} is out of range 0..{NUM_CLASSES - 1}")
    return array


@functools.lru_cache(maxsize=8)
def _verified(path: Path, stamp: tuple[int, int], kind: str, count: int, sha1: str | None
              ) -> onp.ndarray:
    """One file's payload after every check; ``stamp`` (mtime, size) makes a new file re-read."""
    data = _read(path)
    array = _parse(path, data, kind, count)
    # Checked after the structure, so that a truncated file is reported as truncated.
    digest = hashlib.sha1(data).hexdigest()
    if sha1 is not None and digest != sha1:
        raise _bad(path, f"checksum mismatch: SHA-1 of the decompressed bytes is {digest}, "
                         f"expected {sha1}")
    if kind == "labels":
        array = array.astype(onp.int32)
        array.flags.writeable = False  # shared by every caller through the cache
    return array


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


def _load(folder: Path, spec: Spec) -> dict[str, tuple[onp.ndarray, onp.ndarray]]:
    """The verified arrays of ``folder``: split -> (images uint8 (N, 1, 28, 28), labels int32)."""
    paths = _paths(folder)
    missing = [f"{name}.gz" for name, path in paths.items() if path is None]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)}.\nFix: put the four files "
                        f"there, point {DATA_ENV} (or root=) at a folder that has them, or "
                        f"leave both unset to search the usual places (`{FETCH_COMMAND}` "
                        f"fills them).")
    sha1 = dict(spec.sha1)
    arrays = {}
    for split, (images, labels) in FILES.items():
        count = spec.count(split)
        X = _verified(paths[images], _stamp(paths[images]), "images", count, sha1.get(images))
        y = _verified(paths[labels], _stamp(paths[labels]), "labels", count, sha1.get(labels))
        arrays[split] = (X, y)  # equal lengths: both were checked against count
    return arrays


# ---------------------------------------------------------------- where the data comes from

class Source(NamedTuple):
    """A folder that may hold the data, and how it was chosen."""

    path: Path
    kind: str  # "root argument", "D2LBN_DATA", "mxnet cache", "debian package", "download"
    explicit: bool = False  # chosen by the user: bad or missing files are an error there


def mxnet_cache() -> Path:
    """The folder where Gluon keeps Fashion-MNIST (``$MXNET_HOME`` or ``~/.mxnet``)."""
    home = os.environ.get("MXNET_HOME") or Path.home() / ".mxnet"
    return Path(home) / "datasets" / "fashion-mnist"


def candidates(root: str | os.PathLike | None = None) -> list[Source]:
    """The folders searched, in order: ``root`` alone if given, else env, cache, system dirs."""
    if root is not None:
        return [Source(Path(root), "root argument", True)]
    found = [Source(Path(os.environ[DATA_ENV]), DATA_ENV, True)] if os.environ.get(DATA_ENV) else []
    return [*found, Source(mxnet_cache(), "mxnet cache"),
            *(Source(d, "debian package") for d in SYSTEM_DIRS)]


def _search(spec: Spec, root: str | os.PathLike | None = None) -> Source | None:
    """The first candidate holding valid files; None if no candidate has them."""
    for source in candidates(root):
        if source.explicit:
            _load(source.path, spec)  # raises a DataError naming the problem
            return source
        if not any(_paths(source.path).values()):
            continue
        try:
            _load(source.path, spec)
            return source
        except DataError as e:
            warnings.warn(f"skipping {source.kind} {source.path}: {e}", stacklevel=3)
    return None


def _not_found(reason: str) -> DataError:
    files = ", ".join(f"{name}.gz" for name in (*FILES["train"], *FILES["test"]))
    searched = "\n".join(f"  {s.path} ({s.kind})" for s in candidates())
    return DataError(
        f"Fashion-MNIST not found. Searched:\n{searched}\n{reason}\n"
        f"Provide it in one of these ways:\n"
        f"  - set {DATA_ENV} to a folder holding {files}\n"
        f"  - `{INSTALL_COMMAND}`: as root, apt-get install {DEBIAN_PACKAGE} (into {DEBIAN_DIR})"
        f", else as below\n"
        f"  - `{FETCH_COMMAND}`: Gluon's download into {mxnet_cache()}")


def _download(folder: Path) -> None:
    """Download the four .gz files from Gluon's dataset repository into ``folder``."""
    # A private helper, but it honours $MXNET_GLUON_REPO like Gluon's own datasets do.
    from mxnet.gluon.utils import _get_repo_file_url, download
    for name, sha1 in _GLUON_GZ_SHA1.items():
        url = _get_repo_file_url("gluon/dataset/fashion-mnist", f"{name}.gz")
        download(url, path=str(folder / f"{name}.gz"), sha1_hash=sha1, retries=1)


def _download_verified(spec: Spec) -> Source:
    folder = mxnet_cache()
    try:
        _download(folder)
    except Exception as e:  # offline, proxy, HTTP error...: all end in the same advice
        raise _not_found(f"Downloading with Gluon failed: {type(e).__name__}: {e}") from e
    _load(folder, spec)  # a bad download is an error naming the file
    return Source(folder, "download")


def locate(spec: Spec = FASHION_MNIST, root: str | os.PathLike | None = None,
           download: bool = True) -> Source:
    """Where the data comes from: the first valid candidate, else Gluon's download."""
    source = _search(spec, root)
    if source is not None:
        return source
    if not download:
        raise _not_found(f"Not downloaded; `{FETCH_COMMAND}` obtains it.")
    return _download_verified(spec)


def describe(spec: Spec = FASHION_MNIST) -> str:
    """A line or two on where the data comes from and how much is used; never downloads."""
    source = locate(spec, download=False)
    train, test = (len(_load(source.path, spec)[s][1]) for s in FILES)
    text = (f"Fashion-MNIST: {source.path} ({source.kind}), {train} training and "
            f"{test} test images, verified")
    return text


def fetch(spec: Spec = FASHION_MNIST) -> Path:
    """Make sure a valid copy exists (else Gluon's download); return its folder."""
    source = _search(spec)
    if source is not None:
        print(f"Fashion-MNIST already present: {source.path} ({source.kind})")
        return source.path
    print(f"Downloading Fashion-MNIST with Gluon into {mxnet_cache()}", flush=True)
    source = _download_verified(spec)
    print(f"Fashion-MNIST downloaded: {source.path}")
    return source.path


# ---------------------------------------------------------------- DataLoaders

def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _batchify(samples: list[tuple[onp.ndarray, int]], resize: int | None,
              transform: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    X, y = _to_arrays(samples, resize)
    return (X if transform is None else transform(X)), y


def _to_arrays(samples: list[tuple[onp.ndarray, int]], resize: int | None
               ) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*samples)
    X, y = onp.stack(images), np.array(onp.array(labels, onp.int32))  # X: uint8 (N, 1, 28, 28)
    if resize is not None:
        # One channel, so NCHW <-> NHWC is a reshape; bilinear on uint8, as d2l's Resize.
        X = npx.image.resize(np.array(X.reshape(len(X), ROWS, COLS, 1)), (resize, resize))
        return X.reshape(len(X), 1, resize, resize).astype(onp.float32) / 255, y
    # Scaling in NumPy is several times faster than npx.image.to_tensor on small batches.
    return np.array(X.astype(onp.float32) / 255), y


def load_data_fashion_mnist(batch_size: int, resize: int | None = None,
                            root: str | os.PathLike | None = None,
                            spec: Spec = FASHION_MNIST, transform: Callable | None = None,
                            num_train: int | None = None, num_test: int | None = None
                            ) -> tuple[gluon.data.DataLoader, gluon.data.DataLoader]:
    """(train_iter, test_iter) as d2l's: float32 images in [0, 1] of (N, 1, H, W), int labels.

    ``transform`` maps each batch of images to new ones (e.g. ``lambda X: 1 - X``,
    a shifted task for fine-tuning experiments); ``num_train`` and ``num_test``
    keep only the first training and test examples.
    """
    _check_positive_int("batch_size", batch_size)
    for name, value in (("num_train", num_train), ("num_test", num_test)):
        if value is not None:
            _check_positive_int(name, value)
    if transform is not None and not callable(transform):
        raise ValueError(f"transform must be a function of a batch of images, got {transform!r}")
    if resize is not None:
        _check_positive_int("resize", resize)
    arrays = _load(locate(spec, root).path, spec)
    for split, keep in (("train", num_train), ("test", num_test)):
        X, y = arrays[split]
        arrays[split] = (X[:keep], y[:keep])  # X[:None] is all of X
    batchify = functools.partial(_batchify, resize=resize, transform=transform)

    def loader(split: str, shuffle: bool) -> gluon.data.DataLoader:
        # In-process (num_workers=0): batches are cheap, and forking MXNet is fragile.
        return gluon.data.DataLoader(gluon.data.ArrayDataset(*arrays[split]), batch_size,
                                     shuffle=shuffle, batchify_fn=batchify, num_workers=0)

    return loader("train", True), loader("test", False)


def text_labels(labels: Iterable[int]) -> list[str]:
    """The Fashion-MNIST class names of integer labels (d2l's get_fashion_mnist_labels)."""
    return [TEXT_LABELS[int(i)] for i in labels]


get_fashion_mnist_labels = text_labels  # the book's name


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    """``python -m d2lbn data [--fetch]``: say where the data comes from, or obtain it."""
    parser = argparse.ArgumentParser(prog="python -m d2lbn data",
                                     description="Show where Fashion-MNIST is read from.")
    parser.add_argument("--fetch", action="store_true",
                        help="download it with Gluon if no valid copy is found")
    args = parser.parse_args(argv)
    try:
        # FASHION_MNIST is looked up here, at call time, so tests can substitute a small spec.
        if args.fetch:
            fetch(FASHION_MNIST)
        print(describe(FASHION_MNIST))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
