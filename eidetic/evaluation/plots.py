"""Pictures of a continual-learning run: the accuracy matrix and the capacity used per layer.

matplotlib is imported only when a plot is drawn (``pip install matplotlib``, or the
``examples`` extra); the figures are drawn without pyplot, so no window or global state is
involved and any backend works.

Example::

    from eidetic.evaluation.plots import plot_accuracy_matrix, plot_capacity

    results = eidetic.run_tasks(net, tasks, optimizer=make_optimizer, epochs=3)
    plot_accuracy_matrix(results, "accuracy_matrix.png")
    plot_capacity(net.capacity(), "capacity.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .capacity import Capacity
    from .runs import Results


def _figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` (not attached to pyplot), or a clear ImportError."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install matplotlib "
                          "(or pip install 'eidetic[examples]')") from None
    return Figure(figsize=(width, height), layout="constrained")


def _matrix(results: Results | dict | list) -> list[list[float | None]]:
    if isinstance(results, list):
        return results
    if isinstance(results, dict):
        return results["matrix"]
    return results.matrix


def plot_accuracy_matrix(results: Results | dict | list, path: str | Path, *, title: str | None = None) -> Path:
    """Draw the accuracy matrix ``R[i][j]`` (accuracy on task ``j`` after training task ``i``)
    as an annotated heat map and save it to ``path`` (the format follows the extension).

    Args:
        results: an :class:`eidetic.Results`, its ``to_dict()``, or the matrix itself (a list
            of rows, ``None`` above the diagonal).
        path: where to save the picture.
        title: the figure's title (default: average accuracy and BWT).

    Example::

        plot_accuracy_matrix(results, "runs/demo/accuracy_matrix.png")
    """
    matrix = _matrix(results)
    size = len(matrix)
    if size == 0:
        raise ValueError("the accuracy matrix is empty: train at least one task")
    values = [[float("nan") if v is None else v for v in row] for row in matrix]
    fig = _figure(max(4.2, 1.6 + 0.65 * size), 1.2 + 0.55 * size)  # wide enough for the title at 2-3 tasks
    ax = fig.subplots()
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v is not None:
                ax.text(j, i, f"{100 * v:.1f}", ha="center", va="center", fontsize=8,
                        color="black" if v > 0.6 else "white")
    ticks = list(range(size))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_yticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after training task")
    ax.set_title(title if title is not None else _matrix_title(values))
    fig.colorbar(image, ax=ax, label="accuracy", shrink=0.8)
    return _save(fig, path)


def _matrix_title(values: list[list[float]]) -> str:
    last = values[-1]
    average = sum(last) / len(last)
    if len(values) < 2:
        return f"accuracy {average:.3f}"
    bwt = sum(last[j] - values[j][j] for j in range(len(values) - 1)) / (len(values) - 1)
    return f"average accuracy {average:.3f}, BWT {bwt:+.3f}"


def plot_capacity(capacity: Capacity | dict, path: str | Path, *, title: str = "units per layer") -> Path:
    """Draw, per layer (unit group), the units owned by each task as stacked bars, with the
    free units on top, and save it to ``path``.

    Args:
        capacity: ``net.capacity()`` (a :class:`eidetic.Capacity`) or its ``to_dict()``.
        path: where to save the picture.
        title: the figure's title.

    Example::

        plot_capacity(net.capacity(), "runs/demo/capacity.png")
    """
    layers = capacity["layers"] if isinstance(capacity, dict) else capacity.to_dict()["layers"]
    if not layers:
        raise ValueError("the capacity has no layers")
    owned = [{int(t): n for t, n in layer["owned"].items()} for layer in layers]
    tasks = sorted({t for counts in owned for t in counts})
    fig = _figure(2.5 + 0.6 * len(layers), 3.8)
    ax = fig.subplots()
    x = list(range(len(layers)))
    bottom = [0] * len(layers)
    colors = _task_colors(len(tasks))
    for t, color in zip(tasks, colors):
        heights = [counts.get(t, 0) for counts in owned]
        ax.bar(x, heights, bottom=bottom, color=color, label=f"task {t}")
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.bar(x, [layer["free"] for layer in layers], bottom=bottom, color="#dddddd", label="free")
    ax.set_xticks(x, [layer["group"] for layer in layers], rotation=30, ha="right")
    ax.set_ylabel("units")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def _task_colors(count: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
