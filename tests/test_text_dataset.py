"""The character-level text reader, on small texts generated here (and on Tiny Shakespeare's
split sizes, which the rule must reproduce exactly)."""

import numpy as np
import pytest

import pcgraph
from pcgraph.datasets import DatasetError


def _text(n: int, seed: int = 0, alphabet: str = "abcdefgh \n") -> str:
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(list(alphabet), n))


def test_split_sizes_are_tiny_shakespeares():
    # TensorFlow Datasets' tiny_shakespeare: 1,003,854 / 55,770 / 55,770 of 1,115,394.
    assert pcgraph.datasets.split_sizes(1_115_394) == (1_003_854, 55_770, 55_770)
    for n in (20, 21, 99, 100, 101, 12_345):
        sizes = pcgraph.datasets.split_sizes(n)
        assert sum(sizes) == n
        assert sizes[0] == n * 9 // 10
        assert 0 <= sizes[2] - sizes[1] <= 1


def test_a_file_round_trips(tmp_path):
    text = _text(1000)
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8")
    data = pcgraph.datasets.read_text(path)
    assert (len(data.train), len(data.validation), len(data.test)) == (900, 50, 50)
    assert data.vocabulary == "".join(sorted(set(text[:900])))
    assert data.vocab_size == len(data.vocabulary)
    for split in (data.train, data.validation, data.test):
        assert split.dtype == np.int32
    assert data.decode(data.train) == text[:900]
    assert data.decode(data.validation) == text[900:950]
    assert data.decode(data.test) == text[950:]
    assert np.array_equal(data.encode("abc"), [data.vocabulary.index(c) for c in "abc"])


def test_tiny_shakespeare_split_when_present():
    path = pcgraph.datasets._text.pathlib.Path(__file__).parents[2] / "shared" / "datasets"
    path = path / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        pytest.skip("Tiny Shakespeare is not in ../shared/datasets")
    data = pcgraph.datasets.read_text(path)
    assert (len(data.train), len(data.validation), len(data.test)) == (1_003_854, 55_770, 55_770)
    text = path.read_text(encoding="utf-8")
    assert data.decode(data.test[-100:]) == text[-100:]
    assert data.vocab_size == 65


def test_training_windows_are_shifted_by_one():
    data = pcgraph.datasets.text_dataset(_text(2000))
    batches = pcgraph.datasets.windows(data.train, 16, 8, seed=3)
    inputs, targets = next(batches)
    assert inputs.shape == targets.shape == (8, 16)
    assert inputs.dtype == targets.dtype == np.int32
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
    # every window is a contiguous piece of the training split
    joined = data.decode(data.train)
    for row_in, row_out in zip(inputs, targets, strict=True):
        piece = data.decode(np.concatenate([row_in, row_out[-1:]]))
        assert piece in joined
    # the same seed gives the same batches, another seed others
    again = next(pcgraph.datasets.windows(data.train, 16, 8, seed=3))
    other = next(pcgraph.datasets.windows(data.train, 16, 8, seed=4))
    np.testing.assert_array_equal(again[0], inputs)
    assert not np.array_equal(other[0], inputs)
    assert pcgraph.datasets.num_windows(data.train, 16) == len(data.train) - 16


def test_eval_windows_cover_each_target_once():
    data = pcgraph.datasets.text_dataset(_text(2000))
    inputs, targets = pcgraph.datasets.eval_windows(data.test, 7)  # 100 characters
    assert inputs.shape == targets.shape == (99 // 7, 7)
    np.testing.assert_array_equal(inputs.reshape(-1), data.test[: inputs.size])
    np.testing.assert_array_equal(targets.reshape(-1), data.test[1 : inputs.size + 1])


@pytest.mark.parametrize("text", ["", "a"], ids=["empty", "one character"])
def test_too_short_text_is_refused(tmp_path, text):
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DatasetError, match=r"has [01] character\(s\)"):
        pcgraph.datasets.read_text(path)


def test_text_too_short_to_split_is_refused():
    with pytest.raises(DatasetError, match="too few to split"):
        pcgraph.datasets.text_dataset("abcdefghij")


def test_missing_file_and_bad_encoding(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        pcgraph.datasets.read_text(tmp_path / "absent.txt")
    path = tmp_path / "latin1.txt"
    path.write_bytes(("caf\xe9 " * 20).encode("latin-1"))
    with pytest.raises(DatasetError, match="not utf-8 text"):
        pcgraph.datasets.read_text(path)
    assert pcgraph.datasets.read_text(path, encoding="latin-1").vocab_size == 5


def test_context_longer_than_the_split_is_refused():
    data = pcgraph.datasets.text_dataset(_text(200))  # 10 test characters
    with pytest.raises(DatasetError, match="needs 11 tokens .* the split has 10"):
        pcgraph.datasets.eval_windows(data.test, 10)
    with pytest.raises(DatasetError, match="needs 181 tokens"):
        next(pcgraph.datasets.windows(data.train, 180, 4))
    with pytest.raises(DatasetError, match="context must be a positive integer"):
        next(pcgraph.datasets.windows(data.train, 0, 4))
    with pytest.raises(DatasetError, match="batch_size must be a positive integer"):
        next(pcgraph.datasets.windows(data.train, 8, 0))


def test_unknown_characters_raise_or_map():
    text = _text(900, alphabet="abc") + "abcXYabcab" * 10  # X, Y only outside training
    with pytest.raises(DatasetError, match=r"2 character\(s\) absent .* 'X', 'Y'"):
        pcgraph.datasets.text_dataset(text)
    data = pcgraph.datasets.text_dataset(text, unknown="a")
    assert data.vocabulary == "abc"
    assert data.decode(data.validation[:10]) == "abcaaabcab"
    with pytest.raises(DatasetError, match="must be a single character of the training"):
        pcgraph.datasets.text_dataset(text, unknown="Z")
    with pytest.raises(DatasetError, match="absent from the training"):
        data.encode("aXb")
    with pytest.raises(DatasetError, match="token ids must lie in 0..2"):
        data.decode([0, 3])
