"""Standard datasets read from local files (nothing is downloaded): MNIST and Fashion-MNIST
(IDX), CIFAR-10 (binary or python batches), scikit-learn's digits as the fallback, and
character-level text (`read_text`)."""

from ._readers import (
    Dataset as Dataset,
    DatasetError as DatasetError,
    load as load,
    read_cifar_binary as read_cifar_binary,
    read_cifar_pickle as read_cifar_pickle,
    read_idx as read_idx,
)
from ._text import (
    TextDataset as TextDataset,
    eval_windows as eval_windows,
    num_windows as num_windows,
    read_text as read_text,
    split_sizes as split_sizes,
    text_dataset as text_dataset,
    windows as windows,
)

__all__ = [
    "Dataset",
    "DatasetError",
    "load",
    "read_cifar_binary",
    "read_cifar_pickle",
    "read_idx",
    "read_text",
    "split_sizes",
    "text_dataset",
    "TextDataset",
    "eval_windows",
    "num_windows",
    "windows",
]
