"""Accepting the user's data: DataLoaders, or Datasets with a batch size."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from ..errors import TaskError


def as_loader(data, batch_size: int | None, *, shuffle: bool, name: str) -> DataLoader:
    """Return ``data`` as a DataLoader of ``(inputs, targets)`` batches.

    Args:
        data: a ``DataLoader``, or a ``Dataset`` (then ``batch_size`` is required).
        batch_size: batch size used to wrap a Dataset.
        shuffle: whether a wrapped Dataset is shuffled.
        name: the argument's name, for error messages.
    """
    if _is_empty(data.dataset if isinstance(data, DataLoader) else data):
        raise TaskError(f"{name} is empty: it holds no samples")
    if isinstance(data, DataLoader):
        loader = data
    elif isinstance(data, (Dataset, IterableDataset)) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        if batch_size is None:
            raise TaskError(f"{name} is a Dataset: pass batch_size=... so eidetic can batch it, "
                            "or pass a DataLoader")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise TaskError(f"batch_size must be a positive int, got {batch_size!r}")
        loader = _tensor_loader(data, batch_size, shuffle) if type(data) is TensorDataset else \
            DataLoader(data, batch_size=batch_size, shuffle=shuffle and not isinstance(data, IterableDataset))
    else:
        raise TaskError(f"{name} must be a torch DataLoader or Dataset, got {type(data).__name__}")
    return loader


def _tensor_loader(data: TensorDataset, batch_size: int, shuffle: bool) -> DataLoader:
    """The loader ``DataLoader(data, batch_size, shuffle)`` would be, batch for batch and with the
    same draws from torch's random stream, but each batch is taken from the tensors with one
    indexing per tensor instead of one per sample and a collate (the batches hold the same values)."""
    order = RandomSampler(data) if shuffle else SequentialSampler(data)
    return DataLoader(data, batch_size=None, sampler=BatchSampler(order, batch_size, drop_last=False))


def _is_empty(data) -> bool:
    try:
        return len(data) == 0
    except TypeError:
        return False  # an iterable dataset of unknown length: checked when it is read


def split_batch(batch, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of one batch, or a clear error."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            return x, y
    raise TaskError(f"each batch of {name} must be a pair (inputs, targets) of tensors, "
                    f"got {type(batch).__name__}")


def batches(loader: DataLoader, device: torch.device, name: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate ``(inputs, targets)`` on ``device``; raise if the loader yields nothing."""
    seen = False
    for batch in loader:
        x, y = split_batch(batch, name)
        seen = True
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if not seen:
        raise TaskError(f"{name} yielded no batches")


SAMPLE_SEED = 0  # the seed of the shuffling that draws a fixed sample (see :func:`fixed_sample`)


def fixed_sample(loader: DataLoader, device: torch.device, name: str, limit: int
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``limit`` samples of ``loader``, the same ones at every call.

    The loader is read with torch's random generator (and the loader's own ``generator``, if
    it has one) set to a fixed state, and both are put back afterwards, so a shuffling loader
    yields the same samples each time and training's random stream is left as it was. (A
    sampler that draws from another generator, such as numpy's, gives another sample each
    time.) Nothing is kept in memory between calls.
    """
    generator = getattr(loader, "generator", None)
    saved = None if generator is None else generator.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SAMPLE_SEED)
        if generator is not None:
            generator.manual_seed(SAMPLE_SEED)
        try:
            taken = 0
            for x, y in batches(loader, device, name):
                if taken + len(x) > limit:
                    x, y = x[:limit - taken], y[:limit - taken]
                taken += len(x)
                yield x, y
                if taken >= limit:
                    return
        finally:
            if generator is not None:
                generator.set_state(saved)


def first_inputs(loader: DataLoader, name: str) -> torch.Tensor:
    """Up to two input samples from the first batch (the example used to trace the network)."""
    for batch in loader:
        x, _ = split_batch(batch, name)
        if x.shape[0] == 0:
            break
        return x[:2]
    raise TaskError(f"{name} yielded no samples")
