"""eidetic: continual learning without forgetting, for PyTorch.

Subclass :class:`ContinualNetwork`, call :meth:`~ContinualNetwork.train_task` once per task,
and every earlier task's outputs stay bitwise identical.
"""

from .capacity import Capacity, LayerCapacity
from .errors import (
    CheckpointError,
    EideticError,
    GraphError,
    NonFiniteLossError,
    TaskError,
    UnsupportedLayerError,
)
from .graph import LayerSpec, UnitGraph, register_layer
from .network import ContinualNetwork
from .ownership import FREE
from .pruning import Pruning
from .report import EpochStats, PruneStep, TaskReport
from .scoring import ScoringContext, register_importance
from .training import Callback

__version__ = "0.1.0"

__all__ = [
    "FREE",
    "Callback",
    "Capacity",
    "CheckpointError",
    "ContinualNetwork",
    "EideticError",
    "EpochStats",
    "GraphError",
    "LayerCapacity",
    "LayerSpec",
    "NonFiniteLossError",
    "PruneStep",
    "Pruning",
    "ScoringContext",
    "TaskError",
    "TaskReport",
    "UnitGraph",
    "UnsupportedLayerError",
    "register_importance",
    "register_layer",
]
