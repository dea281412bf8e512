"""A character-level text reader: a local text file -> a vocabulary, the text encoded and
split into train / validation / test, and batches of windows for next-character prediction.

The split is the one of TensorFlow Datasets' `tiny_shakespeare`, which every character-level
result on Tiny Shakespeare uses: the first 90 % of the characters (rounded down) for training,
the rest halved between validation and test (test takes the odd character). On the
1,115,394-character Tiny Shakespeare file that is 1,003,854 / 55,770 / 55,770.
"""

import pathlib
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from ._readers import DatasetError


class TextDataset(NamedTuple):
    """A character-level corpus, encoded.

    - `vocabulary`: the distinct characters of the training split, sorted; character
      `vocabulary[i]` is token `i`.
    - `train`, `validation`, `test`: the three splits as `int32` token arrays, in text order.
    - `name`: where the text came from.
    """

    vocabulary: str
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    name: str

    @property
    def vocab_size(self) -> int:
        """The number of distinct tokens."""
        return len(self.vocabulary)

    def encode(self, text: str) -> np.ndarray:
        """Token ids (`int32`) of `text`; raises `DatasetError` on a character the vocabulary
        lacks."""
        return _encode(text, self.vocabulary, None, "the text")

    def decode(self, tokens) -> str:
        """The text of a sequence of token ids."""
        tokens = np.asarray(tokens).reshape(-1)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= len(self.vocabulary)):
            raise DatasetError(
                f"token ids must lie in 0..{len(self.vocabulary) - 1} (the vocabulary has "
                f"{len(self.vocabulary)} characters); got {tokens.min()}..{tokens.max()}."
            )
        return "".join(self.vocabulary[i] for i in tokens.tolist())


def split_sizes(num_characters: int) -> tuple[int, int, int]:
    """The sizes of the train, validation and test splits of a text of `num_characters`:
    `tiny_shakespeare`'s rule, 90 % (rounded down) for training and the rest halved, test
    taking the odd character."""
    num_train = num_characters * 9 // 10
    num_validation = (num_characters - num_train) // 2
    return num_train, num_validation, num_characters - num_train - num_validation


def _encode(text: str, vocabulary: str, unknown: str | None, where: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(vocabulary)}
    missing = sorted(set(text) - index.keys())
    if missing:
        if unknown is None:
            shown = ", ".join(repr(c) for c in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise DatasetError(
                f"{where} holds {len(missing)} character(s) absent from the training split's "
                f"vocabulary: {shown}{more}. Pass unknown=<a character of the vocabulary> to "
                "map them to that character, or use a text whose training split holds every "
                "character."
            )
        for c in missing:
            index[c] = index[unknown]
    return np.fromiter((index[c] for c in text), dtype=np.int32, count=len(text))


def text_dataset(text: str, *, name: str = "text", unknown: str | None = None) -> TextDataset:
    """Encode and split a text held in memory (see `read_text`, which reads it from a file).

    **Arguments:**

    - `text`: the whole corpus, at least 2 characters, each split non-empty.
    - `name`: a label for the dataset.
    - `unknown`: what to do with a validation or test character the training split lacks.
      `None` (the default) raises; a single character of the training vocabulary maps every
      such character to that one (they then count as that character in the perplexity).

    **Returns:**

    A `pcgraph.datasets.TextDataset`.

    **Raises:**

    `pcgraph.datasets.DatasetError` for an empty or one-character text, a text too short for
    three non-empty splits, or an unknown character with `unknown=None`.
    """
    if not isinstance(text, str):
        raise DatasetError(f"the text must be a str; got {type(text).__name__}.")
    if len(text) < 2:
        raise DatasetError(
            f"{name}: the text has {len(text)} character(s); a character-level model needs at "
            "least 2 (one to read, one to predict), and far more to split into train, "
            "validation and test."
        )
    num_train, num_validation, num_test = split_sizes(len(text))
    if min(num_train, num_validation, num_test) < 1:
        raise DatasetError(
            f"{name}: the text has {len(text)} characters, too few to split into train / "
            f"validation / test ({num_train} / {num_validation} / {num_test} characters); it "
            "needs at least 20."
        )
    train = text[:num_train]
    validation = text[num_train : num_train + num_validation]
    test = text[num_train + num_validation :]
    vocabulary = "".join(sorted(set(train)))
    if unknown is not None and (len(unknown) != 1 or unknown not in vocabulary):
        raise DatasetError(
            f"unknown={unknown!r} must be a single character of the training vocabulary "
            f"{vocabulary!r}."
        )
    return TextDataset(
        vocabulary=vocabulary,
        train=_encode(train, vocabulary, unknown, f"{name}: the training split"),
        validation=_encode(validation, vocabulary, unknown, f"{name}: the validation split"),
        test=_encode(test, vocabulary, unknown, f"{name}: the test split"),
        name=name,
    )


def read_text(
    path: str | pathlib.Path, *, unknown: str | None = None, encoding: str = "utf-8"
) -> TextDataset:
    """Read a local text file into a character-level dataset; nothing is downloaded.

    The vocabulary is the set of characters of the training split; the split is
    `tiny_shakespeare`'s (see `split_sizes`): for Tiny Shakespeare's `input.txt`, 1,003,854
    training, 55,770 validation and 55,770 test characters, 65 distinct characters.

    **Arguments:**

    - `path`: the text file, e.g. `tinyshakespeare/input.txt`.
    - `unknown`: see `text_dataset`.
    - `encoding`: the file's text encoding.

    **Returns:**

    A `pcgraph.datasets.TextDataset`.

    **Raises:**

    `pcgraph.datasets.DatasetError` for a missing or undecodable file, and as
    `text_dataset` does.
    """
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"{path}: no such file.")
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not {encoding} text ({e}); pass encoding=...") from e
    return text_dataset(text, name=str(path), unknown=unknown)


def _check_windows(tokens: np.ndarray, context: int) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise DatasetError(
            f"tokens must be a 1-d integer array (a split of a TextDataset); got "
            f"{tokens.dtype}{list(tokens.shape)}."
        )
    if not isinstance(context, int | np.integer) or context < 1:
        raise DatasetError(f"context must be a positive integer; got {context!r}.")
    if len(tokens) < context + 1:
        raise DatasetError(
            f"a window of context {context} needs {context + 1} tokens (its inputs and the "
            f"next character of each), but the split has {len(tokens)}. Use a shorter "
            "context or a longer text."
        )
    return tokens


def num_windows(tokens: np.ndarray, context: int) -> int:
    """The number of stride-1 windows of `context` inputs (and their `context` next-character
    targets) in a split: `len(tokens) - context`."""
    return len(_check_windows(tokens, context)) - context


def windows(
    tokens: np.ndarray, context: int, batch_size: int, *, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """An endless stream of training batches: windows of `context` consecutive tokens drawn
    uniformly among the split's stride-1 windows (with replacement), and their targets, the
    same windows shifted by one.

    **Arguments:**

    - `tokens`: a split of a `TextDataset`, e.g. `data.train`.
    - `context`: the window length.
    - `batch_size`: windows per batch.
    - `seed`: seeds the draw; the same seed gives the same batches.

    **Yields:**

    `(inputs, targets)`, two `int32` arrays of shape `(batch_size, context)`, with
    `targets[:, t] == inputs[:, t + 1]` for `t < context - 1`.

    **Raises:**

    `pcgraph.datasets.DatasetError` when the split is shorter than `context + 1`.
    """
    tokens = _check_windows(tokens, context)
    if batch_size < 1:
        raise DatasetError(f"batch_size must be a positive integer; got {batch_size!r}.")
    rng = np.random.default_rng(seed)
    offsets = np.arange(context + 1)
    count = len(tokens) - context
    while True:
        rows = tokens[rng.integers(0, count, batch_size)[:, None] + offsets]
        yield rows[:, :-1].astype(np.int32), rows[:, 1:].astype(np.int32)


def eval_windows(tokens: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """The split cut into consecutive, non-overlapping windows of `context` tokens: each
    character after the first is a target exactly once (the last, shorter piece is
    dropped). Returns `(inputs, targets)` of shape `(num, context)`, for evaluating a
    perplexity over the whole split."""
    tokens = _check_windows(tokens, context)
    num = (len(tokens) - 1) // context
    inputs = tokens[: num * context].reshape(num, context)
    targets = tokens[1 : num * context + 1].reshape(num, context)
    return inputs.astype(np.int32), targets.astype(np.int32)
