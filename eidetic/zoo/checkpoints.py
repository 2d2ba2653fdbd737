"""Checkpoints of zoo models: how to build one and its state, as plain data."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError
from ..network import ContinualNetwork
from .base import ZooModel
from .registry import CLASSES, METHODS, MODELS

_CHECKPOINT_FORMAT = 1


def save_checkpoint(net: ZooModel, path: str | Path) -> Path:
    """Save a zoo model: how to build it and its ``state_dict`` (weights, heads, owners, routers),
    all plain data that loads with ``torch.load(..., weights_only=True)``.

    Example::

        save_checkpoint(net, "runs/x/model.pt")
    """
    if not isinstance(net, ZooModel):
        raise TypeError(f"save_checkpoint saves eidetic.zoo models; for {type(net).__name__} save "
                        "net.state_dict() with torch.save")
    path = Path(path)
    torch.save({"format": _CHECKPOINT_FORMAT, "config": dict(net.config), "state_dict": net.state_dict()}, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> ContinualNetwork:
    """Rebuild a zoo model saved by :func:`save_checkpoint`, with every task it learnt, as the
    class it was saved from (its ``config["method"]``; ``"eidetic"`` when the checkpoint has none).

    Example::

        net = load_checkpoint("runs/x/model.pt").eval()
        with torch.no_grad():
            prediction = net.predict(x)        # task and class, no task id needed
    """
    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load raises many types for a file that is not a (safe) torch file
        raise CheckpointError(f"{path} is not an eidetic.zoo checkpoint: torch.load cannot read it "
                              f"({type(error).__name__}); write one with eidetic.zoo.save_checkpoint") from error
    if not isinstance(saved, dict) or saved.get("format") != _CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an eidetic.zoo checkpoint")
    config = dict(saved["config"])
    name, method = config.pop("model"), config.pop("method", "eidetic")  # older checkpoints: no method
    if name not in MODELS:
        raise CheckpointError(f"{path} holds an unknown model {name!r}")
    if method not in METHODS:
        raise CheckpointError(f"{path} holds a model of an unknown method {method!r}; this eidetic knows "
                              f"{', '.join(METHODS)}")
    net = CLASSES[method][name](tuple(config.pop("input_shape")), **config)
    net.load_state_dict(saved["state_dict"])
    return net
