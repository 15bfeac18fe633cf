"""The samples an atlas reads: a map-style data set of ``(x, y)`` items or a non-shuffling
DataLoader, split into fixed global batches.

A sample's index is its position in the data set (for a DataLoader: its running position, which
is why the loader must not shuffle). Batch ``b`` holds the samples ``b·batch_size`` to
``(b + 1)·batch_size − 1``; processes, resumed runs and the single-process run all explain every
sample inside the same batch, so they compute the same numbers (the kernels of a model may round
differently for different batch compositions, never for the same one).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, SequentialSampler
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data.dataloader import default_collate

__all__ = ["Source", "model_placement"]


class Source:
    """Validated access to the samples of ``data`` by index and by global batch.

    Parameters
    ----------
    data : torch.utils.data.Dataset or torch.utils.data.DataLoader
        A map-style data set (``len`` and integer indexing) of ``(x, y)`` items, ``x`` a tensor
        and ``y`` an int class (or a one-element integer tensor); or a DataLoader over one
        whose sampler is sequential (``shuffle=False``). A DataLoader's ``batch_size``,
        ``collate_fn`` and ``num_workers`` are used; every sample is read (``drop_last`` is
        ignored).
    batch_size : int
        Samples per pass when ``data`` is a data set.
    argument : str
        The argument's name for error messages.

    Raises
    ------
    TypeError, ValueError
        Naming ``argument``: not a data set or loader, an iterable-style data set, a shuffling
        loader, an empty data set, a first item that is not ``(x, y)``, or a bad ``batch_size``.
    """

    def __init__(self, data: Any, batch_size: int = 32, argument: str = "data") -> None:
        self.argument = argument
        self.collate, self.workers = default_collate, 0
        if isinstance(data, DataLoader):
            if not isinstance(data.sampler, SequentialSampler) or data.batch_size is None:
                raise ValueError(
                    f"{argument}: a DataLoader must read its data set in order with a batch size "
                    f"(shuffle=False, no custom sampler), got sampler "
                    f"{type(data.sampler).__name__} and batch_size {data.batch_size!r}; "
                    "sample indices are positions in the data set"
                )
            dataset, batch_size = data.dataset, data.batch_size
            self.collate, self.workers = data.collate_fn, data.num_workers
        else:
            dataset = data
        if isinstance(dataset, IterableDataset) or not (
            hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")
        ):
            raise TypeError(
                f"{argument} must be a map-style Dataset of (x, y) items (len and indexing) or "
                f"a DataLoader over one, got {type(dataset).__name__}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.dataset: TorchDataset = dataset
        self.size = len(dataset)
        if self.size == 0:
            raise ValueError(f"{argument} is empty; expected at least one (x, y) item")
        self.batch_size = batch_size
        self.n_batches = math.ceil(self.size / batch_size)
        self.check_item(dataset[0], 0)

    def check_item(self, item: Any, index: int) -> None:
        """Raise if ``item`` (the data set's item ``index``) is not an ``(x, y)`` pair."""
        if not isinstance(item, tuple | list) or len(item) != 2:
            got = type(item).__name__ + (
                f" of length {len(item)}" if hasattr(item, "__len__") else ""
            )
            raise ValueError(f"{self.argument}[{index}] must be an (x, y) pair, got {got}")
        x, y = item
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError(
                f"{self.argument}[{index}]: x must be a floating-point tensor, got "
                f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}"
            )
        label = y.reshape(-1)[0] if isinstance(y, torch.Tensor) and y.numel() == 1 else y
        integral = isinstance(label, int) or (
            isinstance(label, torch.Tensor)
            and not label.is_floating_point()
            and label.dtype != torch.bool
        )
        if not integral or isinstance(label, bool):
            raise ValueError(f"{self.argument}[{index}]: y must be an int class, got {y!r}")

    def batch(self, number: int) -> range:
        """Sample indices of global batch ``number``."""
        return range(number * self.batch_size, min((number + 1) * self.batch_size, self.size))

    def batches(self, numbers: Sequence[int]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x, y)`` of the global batches ``numbers``, in that order (x (B, ...), y (B,))."""
        if not numbers:
            return iter(())
        loader = DataLoader(
            self.dataset,
            batch_sampler=[list(self.batch(number)) for number in numbers],
            collate_fn=self.collate,
            num_workers=self.workers,
        )
        return (
            self.split(batch, len(self.batch(n))) for n, batch in zip(numbers, loader, strict=True)
        )

    def fetch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of the samples ``indices`` (read one by one, collated)."""
        items = [self.dataset[int(i)] for i in indices]
        for index, item in zip(indices, items, strict=True):
            self.check_item(item, int(index))
        return self.split(self.collate(items), len(items))

    def split(self, batch: Any, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A collated batch as ``(x (size, ...), y (size,) int64)``."""
        if not isinstance(batch, tuple | list) or len(batch) != 2:
            raise ValueError(f"{self.argument}: a collated batch must be (x, y), got {type(batch)}")
        x, y = batch
        y = torch.as_tensor(y).reshape(-1)
        if not isinstance(x, torch.Tensor) or len(x) != size or len(y) != size:
            raise ValueError(
                f"{self.argument}: a collated batch must hold {size} inputs and {size} labels, got "
                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__} and "
                f"{tuple(y.shape)}"
            )
        return x, y.long()


def model_placement(model: nn.Module, x: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype inputs take for ``model``: those of its first parameter (or
    buffer), else ``x``'s."""
    tensor: torch.Tensor | None = next(model.parameters(), None)
    tensor = next(model.buffers(), None) if tensor is None else tensor
    if tensor is None:
        return x.device, x.dtype
    return tensor.device, tensor.dtype
