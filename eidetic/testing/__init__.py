"""Forgetting tests for your own networks, in your own CI.

``pip install "eidetic[testing]"`` (it pulls Hypothesis and pytest), then, in a test module::

    from eidetic.testing import never_forgets_property

    test_my_net = never_forgets_property(MyNet, (3, 32, 32))

That test trains your network on runs of small random tasks with real pruning, drawn by
Hypothesis together with the optimizer (SGD with momentum, Adam, AdamW, RMSprop, weight decay,
shared instances) and the seed, and after every task checks that every earlier task's logits,
frozen slices and BatchNorm statistics are ``torch.equal`` to what they were, that cut entries
are exactly 0 and that training mode computes what evaluation mode does. See docs/testing.md.

The pieces, to compose your own tests:

* :func:`assert_never_forgets`: one checked run (deterministic, from a seed);
* :func:`never_forgets_property`: the same as a Hypothesis property, a ready test function;
* strategies: :func:`optimizers`, :class:`OptimizerChoice`, :data:`prunings`, :class:`TaskPlan`,
  :data:`task_plans`, :data:`runs`, :data:`seeds`;
* checks for your own training loops: :class:`ForgettingCheck`, :func:`all_logits`,
  :func:`frozen_state` / :func:`assert_persistent` (by position), :func:`unit_state` /
  :func:`assert_same_units` (by unit, across widenings), :func:`assert_resistance`,
  :func:`check_after_task`; failures are :class:`ForgettingError` (an ``AssertionError``).

``import eidetic`` never imports this module (nor Hypothesis).
"""

try:
    import hypothesis  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError('eidetic.testing needs Hypothesis: install the testing extra, pip install "eidetic[testing]"'
                      ) from error

from .checks import (
    ForgettingCheck,
    ForgettingError,
    UnitSlice,
    all_logits,
    assert_persistent,
    assert_resistance,
    assert_same_units,
    check_after_task,
    frozen_state,
    has_dropout,
    unit_state,
)
from .property import default_settings, never_forgets_property
from .runner import DEFAULT_OPTIMIZERS, DEFAULT_PRUNING, InputSampler, OptimizerSetup, assert_never_forgets
from .strategies import OptimizerChoice, TaskPlan, optimizers, prunings, runs, seeds, task_plans

__all__ = [
    "DEFAULT_OPTIMIZERS",
    "DEFAULT_PRUNING",
    "ForgettingCheck",
    "ForgettingError",
    "InputSampler",
    "OptimizerChoice",
    "OptimizerSetup",
    "TaskPlan",
    "UnitSlice",
    "all_logits",
    "assert_never_forgets",
    "assert_persistent",
    "assert_resistance",
    "assert_same_units",
    "check_after_task",
    "default_settings",
    "frozen_state",
    "has_dropout",
    "never_forgets_property",
    "optimizers",
    "prunings",
    "runs",
    "seeds",
    "task_plans",
    "unit_state",
]
