"""Readers for the standard image-classification datasets in their distributed file formats,
from a directory the user names: nothing is downloaded.

- MNIST (LeCun et al. 1998) and Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): IDX files,
  plain or gzipped.
- CIFAR-10 (Krizhevsky 2009): the binary version (`data_batch_1.bin` ... `test_batch.bin`),
  or the python version's pickled batches through an unpickler that builds only dicts,
  lists, strings, bytes, numbers and numpy arrays.
- scikit-learn's bundled 8x8 digits, the fallback when no directory is given.
"""

import gzip
import io
import pathlib
import pickle
import warnings
from typing import NamedTuple

import numpy as np


class Dataset(NamedTuple):
    """A classification dataset as numpy arrays: images `(N, H, W)` or `(N, H, W, C)`
    (`uint8` as stored, or floats for digits), integer labels `(N,)`, and its name."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str


class DatasetError(ValueError):
    """A dataset file is missing, truncated or not in the format its name says."""


# IDX type codes (the third byte of the magic number) and the numpy dtypes they store;
# multi-byte values are big-endian.
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: pathlib.Path) -> bytes:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file.")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # the gzip magic number
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DatasetError(f"{path}: a damaged or truncated gzip file ({e}).") from e
    return raw


def read_idx(path: str | pathlib.Path) -> np.ndarray:
    """Read one IDX file (the format of MNIST and Fashion-MNIST), plain or gzipped.

    **Arguments:**

    - `path`: the file, e.g. `train-images-idx3-ubyte` or `train-images-idx3-ubyte.gz`.

    **Returns:**

    A numpy array of the stored type and shape.

    **Raises:**

    `pcgraph.datasets.DatasetError` when the magic number is not an IDX one, or the file is
    shorter or longer than its header says.
    """
    path = pathlib.Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DatasetError(
            f"{path}: not an IDX file: its magic number is {raw[:4].hex() or 'missing'}, but an "
            "IDX file starts with two zero bytes, a type code (08 for unsigned bytes) and the "
            "number of dimensions, e.g. 00000803 for MNIST's images."
        )
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated inside its header ({len(raw)} bytes).")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DatasetError(
            f"{path}: {what}: a {dtype} array of shape {shape} takes {expected} bytes with "
            f"its header, the file has {len(raw)}. Download the file again."
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _find(directory: pathlib.Path, stem: str) -> pathlib.Path:
    for name in (stem, f"{stem}.gz"):
        if (directory / name).is_file():
            return directory / name
    raise DatasetError(
        f"{directory}: neither {stem} nor {stem}.gz is there. Point data_dir at the folder "
        "holding the dataset's files under their distributed names."
    )


def _load_idx(directory: pathlib.Path, name: str) -> Dataset:
    arrays = {key: read_idx(_find(directory, stem)) for key, stem in _IDX_FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(
                f"{directory}: the {split} images have shape {x.shape} and the labels "
                f"{y.shape}; expected (N, 28, 28) images and (N,) labels."
            )
    return Dataset(
        name=name, **{k: v.astype(np.int64) if k[0] == "y" else v for k, v in arrays.items()}
    )


#: CIFAR-10 binary records: one label byte, then 32 x 32 x 3 pixel bytes (channels first).
_CIFAR_RECORD = 1 + 3 * 32 * 32


def read_cifar_binary(path: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch of CIFAR-10's binary version (e.g. `data_batch_1.bin`).

    **Returns:**

    `(images, labels)`: `uint8` images of shape `(N, 32, 32, 3)` and `int64` labels.

    **Raises:**

    `pcgraph.datasets.DatasetError` when the file is not a whole number of 3,073-byte
    records, or a label is not one of the 10 classes.
    """
    path = pathlib.Path(path)
    raw = _read_bytes(path)
    if not raw or len(raw) % _CIFAR_RECORD:
        raise DatasetError(
            f"{path}: {len(raw)} bytes is not a whole number of CIFAR-10 records (a label byte "
            f"and 3,072 pixel bytes, {_CIFAR_RECORD} in all): the file is truncated or not a "
            "CIFAR-10 binary batch."
        )
    records = np.frombuffer(raw, np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DatasetError(
            f"{path}: a label is {labels.max()}, but CIFAR-10 has classes 0 to 9 (a CIFAR-100 "
            "batch has two label bytes per record)."
        )
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


class _ArraysOnly(pickle.Unpickler):
    """Builds dicts, lists, tuples, strings, bytes, numbers and numpy arrays; refuses every
    other global, so that loading a pickle cannot call a function."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # How protocols 0 to 2 store bytes under Python 3: encode(str, "latin1").
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a dataset pickle may hold only dicts, lists, "
            "strings, bytes, numbers and numpy arrays."
        )


def read_cifar_pickle(path: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch of CIFAR-10's python version (e.g. `data_batch_1`), without
    `pickle.load`: the unpickler builds only dicts, lists, strings, bytes, numbers and numpy
    arrays, and refuses anything else (a pickle that would call a function) before it runs.

    **Returns:**

    `(images, labels)`: `uint8` images of shape `(N, 32, 32, 3)` and `int64` labels.

    **Raises:**

    `pcgraph.datasets.DatasetError` for a pickle that is damaged, refers to anything but
    those types, or lacks the `data` and `labels` entries.
    """
    path = pathlib.Path(path)
    raw = _read_bytes(path)
    try:
        batch = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DatasetError(f"{path}: not a CIFAR-10 python batch: {e}") from e
    if not isinstance(batch, dict):
        raise DatasetError(
            f"{path}: a CIFAR-10 batch is a dict, this pickle holds a {type(batch).__name__}."
        )
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DatasetError(
            f"{path}: a CIFAR-10 batch has `data` and `labels`; this one has {sorted(batch)}."
        )
    data = np.asarray(batch["data"], np.uint8)
    labels = np.asarray(batch["labels"], np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DatasetError(
            f"{path}: `data` has shape {data.shape} and `labels` {labels.shape}; expected "
            "(N, 3072) and (N,)."
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _load_cifar10(directory: pathlib.Path) -> Dataset:
    binary = directory / "cifar-10-batches-bin"
    python = directory / "cifar-10-batches-py"
    for folder, suffix, read in (
        (binary, ".bin", read_cifar_binary),
        (directory, ".bin", read_cifar_binary),
        (python, "", read_cifar_pickle),
        (directory, "", read_cifar_pickle),
    ):
        if (folder / f"test_batch{suffix}").is_file():
            train = [read(folder / f"data_batch_{k}{suffix}") for k in range(1, 6)]
            x_test, y_test = read(folder / f"test_batch{suffix}")
            return Dataset(
                np.concatenate([x for x, _ in train]),
                np.concatenate([y for _, y in train]),
                x_test,
                y_test,
                "cifar10",
            )
    raise DatasetError(
        f"{directory}: no CIFAR-10 batches: expected test_batch.bin and data_batch_1.bin ... "
        "data_batch_5.bin (the binary version), or test_batch and data_batch_1 ... (the python "
        "version), there or in cifar-10-batches-bin/ or cifar-10-batches-py/."
    )


def _load_digits(seed: int) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "scikit-learn's digits need scikit-learn: pip install scikit-learn (or "
            'pip install -e ".[examples]").'
        ) from e
    images, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = int(0.8 * len(labels))
    train, test = order[:cut], order[cut:]
    images = images.reshape(-1, 8, 8)
    return Dataset(images[train], labels[train], images[test], labels[test], "digits")


DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")


def load(
    name: str = "digits", data_dir: str | pathlib.Path | None = None, *, seed: int = 0
) -> Dataset:
    """Load a classification dataset from local files.

    **Arguments:**

    - `name`: `"digits"` (scikit-learn's bundled 8x8 digits, split 80/20 by `seed`),
        `"mnist"`, `"fashion_mnist"` (the four IDX files under their distributed names,
        plain or gzipped) or `"cifar10"` (the binary or the python version's batches).
    - `data_dir`: the folder holding the files. Without it a dataset other than digits
        falls back to digits, with a warning that says so.
    - `seed`: the digits' train/test split (the other datasets come split).

    **Returns:**

    A [`pcgraph.datasets.Dataset`][].

    !!! example

        ```python
        data = pcgraph.datasets.load("mnist", "~/data/mnist")
        x = data.x_train.reshape(len(data.x_train), -1) / 255.0
        ```
    """
    if name not in DATASETS:
        raise ValueError(f"load(name={name!r}): one of {', '.join(map(repr, DATASETS))}.")
    if name == "digits":
        return _load_digits(seed)
    if data_dir is None:
        warnings.warn(
            f"No data directory given for {name!r}, so scikit-learn's digits are used instead. "
            f"Pass data_dir= (or --data-dir) the folder that holds the {name} files.",
            stacklevel=2,
        )
        return _load_digits(seed)
    directory = pathlib.Path(data_dir).expanduser()
    if not directory.is_dir():
        raise DatasetError(f"data_dir={str(data_dir)!r} is not a directory.")
    if name == "cifar10":
        return _load_cifar10(directory)
    return _load_idx(directory, name)
