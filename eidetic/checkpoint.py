"""Checkpoint state of a :class:`~eidetic.ContinualNetwork`: what ``get_extra_state`` saves next
to the weights (input shape and dtype, heads, frozen tasks, unit groups and owners, routers, eras,
masks), how ``set_extra_state`` rebuilds the network from it, and the hook that re-captures the
frozen values once a state dict is loaded."""

from __future__ import annotations

import torch

from .errors import CheckpointError
from .guarantee import widening
from .guarantee.lifecycle import make_guard
from .state import Network, device, forget, reference_tensor, synthetic_example

FORMAT = 2  # 2: eras computed in blocks; format 1 (eras replayed) still loads


def extra_state(net: Network) -> dict:
    """The network's continual state, saved by ``state_dict()`` next to its tensors."""
    state = net._eidetic
    if state.graph is None:
        return {"format": FORMAT}
    return {
        "format": FORMAT,
        "input_shape": list(state.input_shape),
        "input_dtype": str(state.input_dtype).removeprefix("torch."),
        "num_classes": list(net.heads.classes),
        "single_head": net.heads.shared,
        "frozen_tasks": state.frozen_tasks,
        "groups": {g.key: g.size for g in state.graph},
        "initial_groups": dict(state.initial_sizes),
        "owners": {k: v.clone() for k, v in state.ownership.owner.items()},
        "pruned": {k: v.clone() for k, v in state.ownership.pruned.items()},
        "routers": state.routers.state(),
        "eras": state.eras.state(),
        "masks": state.masks.state(state.frozen_tasks),
        "head_inputs": net.heads.input_state(),
    }


def load_extra_state(net: Network, extra: dict) -> None:
    """Rebuild the network's continual state from :func:`extra_state`'s dict: set it up (or widen
    it) to the checkpoint's architecture and re-create its heads, before the tensors load."""
    if not isinstance(extra, dict) or extra.get("format") not in (1, FORMAT):
        raise CheckpointError(f"unknown eidetic checkpoint format {extra!r:.80}")
    state = net._eidetic
    if "input_shape" not in extra:
        if state.graph is not None:
            raise CheckpointError("this checkpoint was saved before any task was trained; load it "
                                  "into a fresh network")
        return
    shape = tuple(extra["input_shape"])
    dtype = getattr(torch, extra["input_dtype"])
    created = state.graph is None
    if created:
        net.setup(synthetic_example(shape, dtype, device(net)))
    built = extra.get("initial_groups")  # absent from checkpoints of before it was saved
    if built is not None and built != state.initial_sizes:
        if created:
            forget(net)
        raise CheckpointError(f"the checkpoint was saved from a different architecture: its network was built with "
                              f"unit groups {built} (grown to {extra['groups']} since), this one with "
                              f"{state.initial_sizes}; construct it as the checkpoint's was, then load")
    sizes = {g.key: g.size for g in state.graph}
    wider = {k: extra["groups"][k] - n for k, n in sizes.items()} if sizes.keys() == extra["groups"].keys() else {}
    if shape == state.input_shape and wider and min(wider.values()) >= 0 and max(wider.values()) > 0:
        widening.widen(net, wider)  # the checkpoint was saved after widen(): grow to its width first
        sizes = {g.key: g.size for g in state.graph}
    if shape != state.input_shape or sizes != extra["groups"]:
        if created:
            forget(net)
        raise CheckpointError(f"the checkpoint (inputs {shape}, unit groups {extra['groups']}) does not match "
                              f"this network (inputs {state.input_shape}, unit groups {sizes}): it was saved "
                              "from a different architecture")
    if extra["single_head"] != net.heads.shared:
        raise CheckpointError(f"the checkpoint was saved with single_head={extra['single_head']}, this network "
                              f"has single_head={net.heads.shared}")
    while net.heads.num_tasks:
        net.heads.drop_last()
    inputs = extra.get("head_inputs", {})
    for task, num_classes in enumerate(extra["num_classes"]):
        width = net.heads.width(task, state.graph.feature_dim, inputs)
        net.heads.add(width, num_classes, like=reference_tensor(net))
    for task, positions in inputs.items():
        net.heads.register_buffer(f"inputs_{task}", positions.to(device(net)), persistent=False)
    state.eras.load(extra.get("eras", {}))
    state.masks.load(extra.get("masks", {}))
    state.frozen_tasks = extra["frozen_tasks"]
    for t in range(state.frozen_tasks):  # masks are placeholders until the state dict fills them
        net.heads.freeze(t, torch.zeros(state.graph.feature_dim))
    for key in sizes:
        state.ownership.owner[key].copy_(extra["owners"][key])
        state.ownership.pruned[key].copy_(extra["pruned"][key])
    state.routers.load(extra["routers"])
    state.routers.apply(lambda t: t.to(device(net)))


def after_load(module: Network, incompatible) -> None:
    """``load_state_dict`` post hook: capture the loaded frozen values in a fresh guard."""
    if module._eidetic.graph is not None:
        make_guard(module)

