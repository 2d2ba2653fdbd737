"""scikit-learn's bundled 8x8 digits: the offline default of ``eidetic run``."""

from __future__ import annotations

import numpy as np
import torch

from .images import ImageSet
from .mnist import SPLIT_SEED


def load_digits(*, test_size: float = 0.25, split_seed: int = SPLIT_SEED) -> ImageSet:
    """scikit-learn's bundled 8x8 digits (no download) as float images in [0, 1] of shape
    ``(N, 1, 8, 8)``, with a fixed stratified test split.

    Example::

        data = load_digits()
        data.x_train.shape, data.x_test.shape     # (1347, 1, 8, 8), (450, 1, 8, 8)
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ImportError("the digits benchmarks need scikit-learn: pip install scikit-learn "
                          "(or pip install 'eidetic[examples]')") from None
    digits = sklearn_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    train, test = train_test_split(np.arange(len(y)), test_size=test_size, stratify=digits.target,
                                   random_state=split_seed)
    train, test = torch.as_tensor(train), torch.as_tensor(test)
    source = f"scikit-learn digits: {len(train)} training, {len(test)} test images (split seed {split_seed})"
    return ImageSet(x[train], y[train], x[test], y[test], source)
