"""eidetic: continual learning without forgetting, for PyTorch.

Subclass :class:`ContinualNetwork`, call :meth:`~ContinualNetwork.train_task` once per task,
and every earlier task's outputs stay bitwise identical.
"""

from .errors import (
    CheckpointError,
    EideticError,
    GraphError,
    NonFiniteLossError,
    TaskError,
    UnsupportedLayerError,
)
from .evaluation.capacity import Capacity, LayerCapacity
from .evaluation.runs import Evaluation, Results, Task, TaskEvaluation, evaluate, run_tasks
from .graph import LayerSpec, UnitGraph, register_layer
from .guarantee.ownership import FREE
from .inference.discriminant import DiscriminantRouter
from .inference.gaussian import GaussianRouter
from .inference.routing import ConfidenceRouter, FeatureStatsRouter, LearnedRouter, Prediction
from .mixins.cpg import CPGMixin
from .mixins.growing import Growing
from .mixins.lsg import LSGMixin
from .mixins.picking import Picking
from .mixins.sparse import SparseGrowth
from .network import ContinualNetwork, Wrapped
from .training.pruning import GracefulPruning, Pruning
from .training.report import EpochStats, PruneStep, TaskReport
from .training.scoring import ScoringContext, register_importance
from .training.session import Callback

__version__ = "0.1.0"

__all__ = [
    "FREE",
    "CPGMixin",
    "Growing",
    "LSGMixin",
    "SparseGrowth",
    "Picking",
    "Callback",
    "GracefulPruning",
    "ConfidenceRouter",
    "DiscriminantRouter",
    "GaussianRouter",
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
