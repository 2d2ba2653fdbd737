"""Learnable sparse masks of GROWN / CL-LSG: the grown, attentive and selective masks.

Three binary masks of the task in training, each a real-valued score per entry relaxed with
the Gumbel-sigmoid trick (:func:`gumbel_sigmoid`):

* the **grown mask** ``m_g``, one entry per candidate unit of a growth step, multiplies every
  tensor slice that produces the unit (weight rows, bias, BatchNorm affine), so that a unit
  whose gate is 0 outputs 0 after a ReLU-family or tanh activation and can be given back;
* the **attentive mask** ``m_a``, one entry per kernel (``out x in``) of the rows the task
  trains: kernels it zeroes are never read by the task, and later tasks may retrain them;
* the **selective mask** ``m_s``, one entry per kernel of the frozen rows the task reads: which
  of the earlier tasks' kernels the task reuses.

The masks are the base's task masks (:mod:`eidetic.guarantee.masks`): earlier tasks never see
them, and they are stored at 1 bit per entry. Every mask's forward value is exactly 0 or 1; the
scores get the gradient of the relaxed value (straight-through). An L0 penalty on ``m_g`` and
``m_a`` is relaxed as the sum of their relaxed values without noise, ``penalty * sum(sigmoid(s / T))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import TaskError, UnsupportedLayerError
from ..graph.layers import grown
from ..guarantee.slices import in_mask, out_mask
from ..state import device, reference_tensor
from ..training import distributed
from ..training.session import Callback
from .growing import check_ratio, widenable_groups


@dataclass(frozen=True)
class SparseGrowth:
    """Learnable sparse growth's configuration (the papers' values where they give them).

    Args:
        candidates: candidate units per growth step in each grown group: a fraction of the
            group's size at set-up (a float; at least one unit), or a number of units (an int).
        penalty: the L0 penalty ``lambda`` on the grown and attentive masks (papers: 1e-4).
        temperature: the Gumbel-sigmoid temperature ``T`` (the slope of the relaxation).
        init: every score's initial value (masks start at 1; the noise flips an entry with
            probability ``sigmoid(-init)`` in training).
        mask_lr: the learning rate of the masks' Adam (papers: 5e-4).
        max_width: a group grows to at most this many times its size at set-up (the papers'
            seed is 1/8 of the full network: 8.0 grows it back to full width); a cap per group,
            below the parameter budget.
        max_ratio: the parameter budget, shared with CPG's :class:`Growing`: the body, candidate
            pools included, has at most this many times its parameters at set-up; a pool that
            would go past it is scaled down to the largest that fits (:mod:`.growing`).
        groups: the unit groups to grow (keys of ``net.graph``); ``None``: every group that can
            be widened and is one block (a stacked or bidirectional recurrent layer is not).
        select: learn the selective mask over the frozen weights a task reads (``False``:
            read them all).
        release: retrain the kernels that every task reading them masks out.
        first_task: let the first task grow too (the papers' setting, from a seed network; raise
            ``max_ratio`` for a seed much smaller than the network you want). ``False``: growth
            starts with the second task, as in CPG, and the budget goes to the tasks that find
            the network full.

    Example::

        growth = eidetic.SparseGrowth(candidates=0.5, max_width=4.0, mask_lr=1e-2)
        net.train_task(1, loader, num_classes=5, optimizer=make_opt, epochs=10, goal=0.9, growth=growth)
    """

    candidates: float | int = 1.0
    penalty: float = 1e-4
    temperature: float = 1.0
    init: float = 2.0
    mask_lr: float = 5e-4
    max_width: float = 8.0
    max_ratio: float = 1.5
    groups: tuple[str, ...] | None = None
    select: bool = True
    release: bool = True
    first_task: bool = False

    def __post_init__(self) -> None:
        c = self.candidates
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
            raise TaskError(f"SparseGrowth(candidates={c!r}): use a positive fraction (float) or number of units (int)")
        for name, low in (("penalty", 0.0), ("temperature", None), ("init", 0.0), ("mask_lr", None),
                          ("max_width", 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TaskError(f"SparseGrowth({name}={value!r}): use a finite number")
            if (low is None and value <= 0) or (low is not None and value < low):
                raise TaskError(f"SparseGrowth({name}={value!r}): must be {'positive' if low is None else f'>= {low}'}")
        check_ratio("SparseGrowth", self.max_ratio)
        if self.groups is not None and (isinstance(self.groups, str) or not self.groups):
            raise TaskError(f"SparseGrowth(groups={self.groups!r}): give a non-empty tuple of group keys, or None")

    def growable(self, graph, layers) -> list[str]:
        """The groups a growth step widens; raises if a named group cannot grow."""
        keys = widenable_groups(graph, layers, self.groups, "SparseGrowth")
        split = [key for key in keys if len(graph[key].blocks(layers)) > 1]
        if split and self.groups is not None:
            raise UnsupportedLayerError(f"SparseGrowth(groups=...): group(s) {split} are split in blocks (a stacked "
                                        "or bidirectional recurrent layer), whose candidates could not be given back "
                                        "one by one; grow the other groups")
        return [key for key in keys if key not in split]

    def request(self, graph, layers, initial: dict[str, int]) -> dict[str, int]:
        """``{group: candidate units}`` of the next growth step, within ``max_width`` (the budget
        then scales it down, see :func:`~eidetic.mixins.growing.within_budget`)."""
        units = {}
        for key in self.growable(graph, layers):
            seed = initial.get(key, graph[key].size)
            step = self.candidates if isinstance(self.candidates, int) else max(1, math.ceil(self.candidates * seed))
            room = math.floor(self.max_width * seed) - graph[key].size
            if min(step, room) > 0:
                units[key] = min(step, room)
        return units


def logistic_noise(like: torch.Tensor) -> torch.Tensor:
    """``g0 - g1`` for two independent standard Gumbel samples per entry of ``like``: standard
    logistic noise (mean 0, variance pi^2 / 3)."""
    tiny = torch.finfo(like.dtype).tiny
    u = torch.rand((2, *like.shape), dtype=like.dtype, device=like.device).clamp(tiny, 1.0)
    g = -torch.log((-torch.log(u)).clamp_min(tiny))
    return g[0] - g[1]


def gumbel_sigmoid(scores: torch.Tensor, temperature: float, noisy: bool) -> torch.Tensor:
    """The hard Gumbel-sigmoid of ``scores``: ``1`` where ``sigmoid((s + g0 - g1) / T) > 0.5``
    (that is, ``s + g0 - g1 > 0``), else ``0``, with the gradient of the relaxed value. Without
    ``noisy`` (evaluation), the noise is left out: the mask is ``s > 0``, deterministic."""
    logits = scores + logistic_noise(scores) if noisy else scores
    soft = torch.sigmoid(logits / temperature)
    return (logits > 0).to(scores.dtype) + (soft - soft.detach())


def _kernels(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """An element mask over ``like`` reduced to one entry per kernel (dims 0 and 1): any."""
    full = mask.to(like.device).expand_as(like)
    reduced = full.reshape(*full.shape[:2], -1).any(dim=-1) if full.dim() > 2 else full.clone()
    return reduced.reshape(*full.shape[:2], *([1] * (full.dim() - 2)))


@dataclass
class _Kernel:
    """The kernel scores of one body tensor: ``selective`` and ``attentive`` entries are disjoint."""

    scores: torch.Tensor
    selective: torch.Tensor
    attentive: torch.Tensor


class SparseMasks:
    """The grown, attentive and selective masks of the task in training of network ``net``.

    :meth:`start` builds scores over the network's present shape (from the decisions kept so
    far: entries decided 0 start at ``-init``) and installs them as the open task's masks;
    :meth:`settle` turns them into fixed binary tensors, the decisions. Around a widening,
    :meth:`widened` and :meth:`narrowed` carry the decisions to the new shape.
    """

    def __init__(self, net, growth: SparseGrowth) -> None:
        self.net, self.growth = net, growth
        self.kernels: dict[str, _Kernel] = {}
        self.gates: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # group -> (scores, candidate units)
        self.keep: dict[str, torch.Tensor] = {}  # decided kernel masks, by "module.tensor"
        self.picked: dict[str, float] = {}  # the selective masks' decisions, per layer (see settle)
        self.optimizer: torch.optim.Optimizer | None = None
        self.callback = _StepMasks(self)

    # ------------------------------------------------------------------ releasing

    def release(self) -> dict[str, int]:
        """Let the open task retrain every kernel of a frozen row that reads frozen units only
        and that every finished task reading its value masks out; returns the entries released
        per layer."""
        net = self.net
        state = net._eidetic
        counts: dict[str, int] = {}
        free_units = state.ownership.masks("free")
        for name, (module, spec) in state.layers.items():
            inputs = spec.input_size(module)
            if not inputs:
                continue
            columns = in_mask(state.graph, name, free_units, inputs)
            reads_free = dict(spec.consumer_entries(module, None, columns)) if columns.any() else {}
            for tensor_name in sorted(spec.tensor_names()):
                key = f"{name}.{tensor_name}"
                weight = getattr(module, tensor_name)
                if weight.dim() < 2 or not isinstance(weight, torch.nn.Parameter):
                    continue
                owner = state.masks.owners(key, net._row_owner).to(weight.device)
                free = owner < 0
                if tensor_name in reads_free:  # a retrained entry must read constant units only
                    free = free | reads_free[tensor_name].to(weight.device).expand_as(free)
                hidden = ~free
                for k in range(state.frozen_tasks):
                    mask = state.masks.masks.get(k, {}).get(key)
                    reads = owner <= k
                    hidden &= ~reads if mask is None else ~(reads & mask.to(weight.device).expand_as(reads))
                whole = ~_kernels(~hidden, weight)  # whole kernels only, of frozen rows reading frozen units
                entries = whole.expand_as(weight)
                if entries.any():
                    net._release(key, entries)
                    counts[name] = counts.get(name, 0) + int(entries.sum())
        return counts

    # ------------------------------------------------------------------ masks

    def start(self, candidates: dict[str, torch.Tensor] | None = None) -> None:
        """Fresh scores over the present shape, installed as the open task's masks;
        ``candidates``: ``{group: mask over its units}`` of a growth step's candidates (gated)."""
        state, growth = self.net._eidetic, self.growth
        frozen, free, alive = (state.ownership.masks(w) for w in ("frozen", "free", "alive"))
        select = growth.select and state.frozen_tasks > 0
        self.kernels, self.gates = {}, {}
        for name, (module, spec) in state.layers.items():
            inputs = spec.input_size(module)
            if not inputs:
                continue
            units = spec.unit_count(module)
            rows_frozen = out_mask(state.graph, name, frozen, units)
            rows_own = out_mask(state.graph, name, alive, units)
            read = ~in_mask(state.graph, name, free, inputs)
            selective = dict(spec.consumer_entries(module, rows_frozen, read)) if select and rows_frozen.any() else {}
            attentive = dict(spec.consumer_entries(module, rows_own, torch.ones_like(read))) if rows_own.any() else {}
            for tensor_name in sorted(set(selective) | set(attentive)):
                key = f"{name}.{tensor_name}"
                weight = getattr(module, tensor_name)
                if weight.dim() < 2:
                    continue
                nothing = torch.zeros(1, dtype=torch.bool, device=weight.device)
                sel = _kernels(selective.get(tensor_name, nothing), weight)
                if key in state.masks.released:
                    sel &= ~_kernels(state.masks.released[key], weight)
                att = _kernels(attentive.get(tensor_name, nothing), weight) & ~sel
                keep = self.keep.get(key)
                keep = torch.ones_like(sel) if keep is None or keep.shape != sel.shape else keep.to(sel.device)
                scores = torch.where(keep, growth.init, -growth.init).to(weight.dtype).requires_grad_(True)
                self.kernels[key] = _Kernel(scores, sel, att)
        for key, units in (candidates or {}).items():
            scores = torch.full((len(units),), growth.init, dtype=reference_tensor(self.net).dtype,
                                device=device(self.net), requires_grad=True)
            self.gates[key] = (scores, units.to(scores.device))
        self._install()

    def _install(self) -> None:
        net, state = self.net, self.net._eidetic
        factors: dict[str, list] = {}
        for key, kernel in self.kernels.items():
            factors.setdefault(key, []).append(lambda k=kernel: self._kernel_mask(k))
        for group, (scores, units) in self.gates.items():
            for slot in state.graph[group].outs:
                module, spec = state.layers[slot.module]
                for tensor_name, dim, index, owner in spec.producer_slices(module, slot.index.to(scores.device)):
                    key = f"{slot.module}.{tensor_name}"
                    tensor = getattr(module, tensor_name)
                    if isinstance(tensor, torch.nn.Parameter):
                        factors.setdefault(key, []).append(
                            lambda s=scores, u=units, su=slot.units, d=dim, i=index, o=owner, t=tensor:
                            self._gate(s, u, su, d, i, o, t))
        for key, parts in factors.items():
            net._set_mask(key, lambda parts=parts: math.prod(part() for part in parts))
        params = [k.scores for k in self.kernels.values()] + [s for s, _ in self.gates.values()]
        self.optimizer = torch.optim.Adam(params, lr=self.growth.mask_lr) if params else None

    def _noisy(self) -> bool:
        return self.net.training and self.optimizer is not None

    def _kernel_mask(self, kernel: _Kernel) -> torch.Tensor:
        m = gumbel_sigmoid(kernel.scores, self.growth.temperature, self._noisy())
        return torch.where(kernel.selective | kernel.attentive, m, torch.ones_like(m))

    def _gate(self, scores, units, slot_units, dim, index, owner, tensor) -> torch.Tensor:
        m = torch.where(units, gumbel_sigmoid(scores, self.growth.temperature, self._noisy()), torch.ones_like(scores))
        values = m[slot_units.to(m.device)][owner.to(m.device)]
        vector = torch.ones(tensor.shape[dim], dtype=m.dtype, device=m.device).index_copy(0, index.to(m.device), values)
        shape = [1] * tensor.dim()
        shape[dim] = tensor.shape[dim]
        return vector.view(shape)

    def penalty(self) -> torch.Tensor | None:
        """The relaxed L0 penalty of the grown and attentive masks."""
        T, terms = self.growth.temperature, []
        for kernel in self.kernels.values():
            if kernel.attentive.any():
                terms.append((torch.sigmoid(kernel.scores / T) * kernel.attentive).sum())
        for scores, units in self.gates.values():
            terms.append((torch.sigmoid(scores / T) * units).sum())
        return self.growth.penalty * torch.stack(terms).sum() if terms and self.growth.penalty else None

    def settle(self) -> dict[str, torch.Tensor]:
        """Fix the masks at their deterministic values (no noise): the decisions. Returns
        ``{group: candidate units kept}`` of the growth step's gates."""
        self.optimizer = None
        self.picked = self._picked()
        for key, kernel in self.kernels.items():
            with torch.no_grad():
                self.keep[key] = self._kernel_mask(kernel).bool()
        kept = {group: (units & (scores > 0)).cpu() for group, (scores, units) in self.gates.items()}
        values = self.net._eidetic.masks.values(self.net.num_tasks - 1)
        for key, value in values.items():
            self.net._set_mask(key, value.detach())
        self.kernels, self.gates = {}, {}
        return kept

    def widened(self, layouts: dict[str, list]) -> None:
        """The network was widened: decisions follow, new kernels start kept."""
        for key, keep in self.keep.items():
            if key in layouts:
                layout = [m for m in layouts[key] if keep.shape[m[0]] != 1]
                self.keep[key] = ~grown(~keep, layout)

    def narrowed(self, narrow) -> None:
        """Candidates were given back (``narrow`` from ``net._keep_new_units``): decisions follow."""
        self.keep = {key: narrow(key, keep) for key, keep in self.keep.items()}

    def install(self) -> None:
        """Set the decisions as the open task's masks (after :meth:`narrowed`)."""
        like = reference_tensor(self.net)
        for key, keep in self.keep.items():
            self.net._set_mask(key, keep.to(device=like.device, dtype=like.dtype))

    def _picked(self) -> dict[str, float]:
        """Per layer: the fraction of the frozen kernels it may select that the task keeps."""
        kept: dict[str, list[int]] = {}
        for key, kernel in self.kernels.items():
            if kernel.selective.any():
                counts = kept.setdefault(key.rpartition(".")[0], [0, 0])
                counts[0] += int((kernel.selective & (kernel.scores > 0)).sum())
                counts[1] += int(kernel.selective.sum())
        return {layer: k / total for layer, (k, total) in kept.items()}


class _StepMasks(Callback):
    """Adds the penalty's gradient and steps the masks' optimizer after every weight step."""

    def __init__(self, masks: SparseMasks) -> None:
        self.masks = masks

    def on_step_end(self, task: int, loss: torch.Tensor) -> None:
        optimizer = self.masks.optimizer
        if optimizer is None:
            return
        penalty = self.masks.penalty()
        if penalty is not None:
            penalty.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        distributed.average_gradients(params)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
