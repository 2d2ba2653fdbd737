"""A ready forgetting test: :func:`assert_never_forgets` as a Hypothesis property."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import settings as Settings
from hypothesis import strategies as st

from ..network import ContinualNetwork
from . import strategies
from .runner import assert_never_forgets

__all__ = ["default_settings", "never_forgets_property"]


def default_settings(max_examples: int | None = None) -> Settings:
    """The Hypothesis settings of :func:`never_forgets_property` unless told otherwise: the
    current profile's, with no deadline (a run trains several tasks), the health checks that
    slow examples trip suppressed, and ``max_examples`` (default: a tenth of the profile's, at
    least 10: 10 for Hypothesis' default profile, 200 for a profile of 2000).

    Example::

        test_my_net = never_forgets_property(MyNet, (3, 32, 32), settings=default_settings(50))
    """
    if max_examples is None:
        max_examples = max(10, Settings.default.max_examples // 10)
    return Settings(max_examples=max_examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _name(net_factory: Callable[..., Any]) -> str:
    name = getattr(net_factory, "__name__", type(net_factory).__name__)
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()
    return re.sub(r"\W", "_", name).strip("_") or "net"


def never_forgets_property(
    net_factory: Callable[[], ContinualNetwork],
    input_shape: Sequence[int] | None = None,
    *,
    optimizers: st.SearchStrategy | None = None,
    plans: st.SearchStrategy | None = None,
    seeds: st.SearchStrategy[int] | None = None,
    settings: Settings | None = None,
    max_examples: int | None = None,
    **kwargs: Any,
) -> Callable[[], None]:
    """A ready test function: :func:`assert_never_forgets` over drawn optimizers, task runs and seeds.

    Assign it to a ``test_`` name in a test module and pytest runs it::

        from eidetic.testing import never_forgets_property

        test_my_net = never_forgets_property(MyNet, (3, 32, 32))

    Args:
        net_factory, input_shape: as for :func:`assert_never_forgets`.
        optimizers: a strategy of optimizer set-ups (default :func:`strategies.optimizers`: SGD,
            Adam, AdamW, RMSprop, weight decay, shared instances or not).
        plans: a strategy of task runs, lists of :class:`TaskPlan` (default :data:`strategies.runs`:
            2 to 4 tasks, every pruning method).
        seeds: a strategy of seeds (default :data:`strategies.seeds`).
        settings: the Hypothesis settings (default :func:`default_settings`); a test function
            takes one settings object only, so pass yours here rather than decorating the result.
        max_examples: shorthand for ``settings=default_settings(max_examples)``.
        **kwargs: more arguments of :func:`assert_never_forgets` (``input_sampler``, ``widen``,
            ``train_kwargs``, ``train_mode``...); a value that is a Hypothesis strategy is drawn
            for each example (``train_kwargs=st.fixed_dictionaries({"goal": st.sampled_from([0.0,
            1.0])})``).

    Returns:
        a test function taking no argument, named ``test_<factory>_never_forgets``.

    Example::

        test_text_net = never_forgets_property(
            TextNet, input_sampler=lambda g, n: torch.randint(0, 100, (n, 12), generator=g),
            settings=hypothesis.settings(max_examples=20, deadline=None))
    """
    if settings is not None and max_examples is not None:
        raise TypeError("give settings or max_examples, not both")
    fixed = {k: v for k, v in kwargs.items() if not isinstance(v, st.SearchStrategy)}
    drawn = {k: v for k, v in kwargs.items() if isinstance(v, st.SearchStrategy)}
    clash = {"tasks", "optimizers", "seed"} & set(kwargs)
    if clash:
        raise TypeError(f"{sorted(clash)}: drawn by the property; give strategies as optimizers=, plans=, seeds=")

    def test(optimizer, run, seed, extra) -> None:
        assert_never_forgets(net_factory, input_shape, tasks=run, optimizers=optimizer, seed=seed, **fixed, **extra)

    name = f"test_{_name(net_factory)}_never_forgets"
    test.__name__ = test.__qualname__ = name
    test.__doc__ = f"{getattr(net_factory, '__name__', net_factory)!s} never forgets (eidetic.testing)."
    # Tests made here share their source: tell them apart in Hypothesis' example database.
    test._hypothesis_internal_add_digest = repr((name, input_shape, sorted(kwargs))).encode()
    test = given(optimizer=optimizers if optimizers is not None else strategies.optimizers(),
                 run=plans if plans is not None else strategies.runs,
                 seed=seeds if seeds is not None else strategies.seeds,
                 extra=st.fixed_dictionaries(drawn))(test)
    return (settings or default_settings(max_examples))(test)
