"""The dataset readers, on small files written here in the standard formats: IDX (MNIST,
Fashion-MNIST), CIFAR-10's binary and python batches."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest

import pcgraph


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _mnist_folder(path, n_train=5, n_test=3, gz=False):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, array in arrays.items():
        data = _idx(array)
        if gz:
            (path / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (path / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_mnist_idx_files_round_trip(tmp_path, gz):
    arrays = _mnist_folder(tmp_path, gz=gz)
    data = pcgraph.datasets.load("fashion_mnist", tmp_path)
    assert data.name == "fashion_mnist"
    assert np.array_equal(data.x_train, arrays["train-images-idx3-ubyte"])
    assert np.array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert data.x_train.dtype == np.uint8 and data.y_train.dtype == np.int64


def test_idx_reads_big_endian_types(tmp_path):
    array = np.arange(6, dtype=">f4").reshape(2, 3)
    header = bytes([0, 0, 0x0D, 2]) + struct.pack(">II", 2, 3)
    (tmp_path / "floats").write_bytes(header + array.tobytes())
    assert np.array_equal(pcgraph.datasets.read_idx(tmp_path / "floats"), array)


def test_idx_bad_files(tmp_path):
    good = _idx(np.zeros((4, 28, 28)))
    (tmp_path / "truncated").write_bytes(good[:-100])
    with pytest.raises(pcgraph.datasets.DatasetError, match="truncated: a uint8 array of shape"):
        pcgraph.datasets.read_idx(tmp_path / "truncated")
    (tmp_path / "magic").write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(
        pcgraph.datasets.DatasetError, match="not an IDX file: its magic number is 1234"
    ):
        pcgraph.datasets.read_idx(tmp_path / "magic")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(pcgraph.datasets.DatasetError, match="damaged or truncated gzip"):
        pcgraph.datasets.read_idx(tmp_path / "bad.gz")
    with pytest.raises(pcgraph.datasets.DatasetError, match="neither train-images-idx3-ubyte nor"):
        pcgraph.datasets.load("mnist", tmp_path)


def _cifar_records(n, rng):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    pixels = rng.integers(0, 256, (n, 3 * 32 * 32)).astype(np.uint8)
    return labels, pixels


def test_cifar_binary_batches(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    expected = {}
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        labels, pixels = _cifar_records(2, rng)
        (folder / f"{name}.bin").write_bytes(np.column_stack([labels, pixels]).tobytes())
        expected[name] = (labels, pixels)
    data = pcgraph.datasets.load("cifar10", tmp_path)
    assert data.x_train.shape == (10, 32, 32, 3) and data.y_train.shape == (10,)
    labels, pixels = expected["test_batch"]
    assert np.array_equal(data.y_test, labels)
    # Channels first in the file, last in the array: pixel (row 0, col 1) of the green plane.
    assert data.x_test[1, 0, 1, 1] == pixels[1, 1024 + 1]


def test_cifar_binary_bad_files(tmp_path):
    rng = np.random.default_rng(2)
    labels, pixels = _cifar_records(3, rng)
    record = np.column_stack([labels, pixels]).tobytes()
    (tmp_path / "short.bin").write_bytes(record[:-5])
    with pytest.raises(
        pcgraph.datasets.DatasetError, match="not a whole number of CIFAR-10 records"
    ):
        pcgraph.datasets.read_cifar_binary(tmp_path / "short.bin")
    labels[0] = 57
    (tmp_path / "labels.bin").write_bytes(np.column_stack([labels, pixels]).tobytes())
    with pytest.raises(pcgraph.datasets.DatasetError, match="a label is 57"):
        pcgraph.datasets.read_cifar_binary(tmp_path / "labels.bin")


def test_cifar_python_batches(tmp_path):
    rng = np.random.default_rng(3)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        labels, pixels = _cifar_records(2, rng)
        batch = {b"batch_label": b"x", b"labels": labels.tolist(), b"data": pixels}
        (tmp_path / name).write_bytes(pickle.dumps(batch, protocol=2))
    data = pcgraph.datasets.load("cifar10", tmp_path)
    assert data.x_train.shape == (10, 32, 32, 3)
    assert np.array_equal(data.x_test[1].transpose(2, 0, 1).ravel(), pixels[1])


class _Exploit:
    """Unpickling this would call `os.system`."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_cifar_pickle_that_calls_a_function_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}))
    with pytest.raises(
        pcgraph.datasets.DatasetError, match=r"refusing to load (posix|os|nt)\.system"
    ):
        pcgraph.datasets.read_cifar_pickle(tmp_path / "data_batch_1")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "list").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(pcgraph.datasets.DatasetError, match="a CIFAR-10 batch is a dict"):
        pcgraph.datasets.read_cifar_pickle(tmp_path / "list")
    (tmp_path / "truncated").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072))})[:-10])
    with pytest.raises(pcgraph.datasets.DatasetError, match="not a CIFAR-10 python batch"):
        pcgraph.datasets.read_cifar_pickle(tmp_path / "truncated")


def test_no_directory_falls_back_to_digits_with_a_warning():
    with pytest.warns(UserWarning, match="No data directory given for 'mnist'.*digits are used"):
        data = pcgraph.datasets.load("mnist")
    assert data.name == "digits" and data.x_train.shape[1:] == (8, 8)
    assert len(data.x_train) + len(data.x_test) == 1797
    with pytest.raises(ValueError, match=r"load\(name='imagenet'\): one of 'digits', 'mnist'"):
        pcgraph.datasets.load("imagenet")
    with pytest.raises(pcgraph.datasets.DatasetError, match="is not a directory"):
        pcgraph.datasets.load("mnist", "/nonexistent/folder")
