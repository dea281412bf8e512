"""Standard datasets read from local files (nothing is downloaded): MNIST and Fashion-MNIST
(IDX), CIFAR-10 (binary or python batches), and scikit-learn's digits as the fallback."""

from ._readers import (
    Dataset as Dataset,
    DatasetError as DatasetError,
    load as load,
    read_cifar_binary as read_cifar_binary,
    read_cifar_pickle as read_cifar_pickle,
    read_idx as read_idx,
)

__all__ = [
    "Dataset",
    "DatasetError",
    "load",
    "read_cifar_binary",
    "read_cifar_pickle",
    "read_idx",
]
