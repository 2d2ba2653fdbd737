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
from .evaluation import Evaluation, Results, Task, TaskEvaluation, evaluate, run_tasks
from .graph import LayerSpec, UnitGraph, register_layer
from .network import ContinualNetwork, Wrapped
from .ownership import FREE
from .pruning import GracefulPruning, Pruning
from .report import EpochStats, PruneStep, TaskReport
from .routing import ConfidenceRouter, FeatureStatsRouter, LearnedRouter, Prediction
from .scoring import ScoringContext, register_importance
from .training import Callback

__version__ = "0.1.0"

__all__ = [
    "FREE",
    "Callback",
    "GracefulPruning",
    "ConfidenceRouter",
    "Evaluation",
    "FeatureStatsRouter",
    "LearnedRouter",
    "Prediction",
    "Results",
    "Task",
    "TaskEvaluation",
    "evaluate",
    "run_tasks",
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
    "Wrapped",
    "register_importance",
    "register_layer",
]
