"""The IDX format of MNIST and Fashion-MNIST: a big-endian header (type, dimensions) and the
values, gzip-compressed or raw."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (the format of the MNIST files), gzip-compressed or raw.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a valid IDX file (the message names it).

    Example::

        images = read_idx("data/mnist/t10k-images-idx3-ubyte.gz")   # uint8, (10000, 28, 28)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such IDX file: {path}")
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gzipped else path.open("rb")) as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    return _parse_idx(data, path)


def _parse_idx(data: bytes, path: Path) -> torch.Tensor:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES or data[3] == 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim, dtype = data[3], np.dtype(_IDX_TYPES[data[2]])
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: its header needs {header} bytes, it has {len(data)}")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path} holds {len(data) - header} bytes of data, but its header {shape} needs {expected}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def write_idx(path: str | Path, tensor: torch.Tensor, *, compress: bool | None = None) -> Path:
    """Write ``tensor`` as an IDX file (gzip-compressed when ``compress``, by default when the
    name ends in ``.gz``). The inverse of :func:`read_idx`; handy for tests and for exporting.

    Example::

        write_idx("tiny/t10k-labels-idx1-ubyte.gz", torch.tensor([3, 1, 4], dtype=torch.uint8))
    """
    path = Path(path)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}
    array = tensor.detach().cpu().numpy()
    if array.dtype not in codes:
        raise ValueError(f"IDX has no type for {tensor.dtype}; use uint8, int8, int16, int32, float32 or float64")
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") if compress else path.open("wb") as f:
        f.write(payload)
    return path
