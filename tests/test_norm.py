"""Frozen BatchNorm channels in training mode: the forward of evaluation mode, and its gradient."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.func import functional_call

import eidetic

from models import CNN, MLP


def _half_frozen(net: eidetic.ContinualNetwork, x: torch.Tensor) -> eidetic.ContinualNetwork:
    """Train one task that keeps about half of every layer, so BatchNorm layers hold both kinds."""
    data = torch.utils.data.TensorDataset(x, torch.randint(0, 2, (len(x),)))
    net.train_task(0, data, batch_size=8, num_classes=2, epochs=1, progress=False,
                   optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                   pruning=eidetic.Pruning(step=0.5, tolerance=0.99, max_steps=1))
    frozen = net._eidetic.ownership.masks("frozen")
    assert all(0 < int(m.sum()) < m.numel() for m in frozen.values())
    return net.double().train()


def test_gradient_through_frozen_channels_is_that_of_the_forward():
    torch.manual_seed(0)
    net = _half_frozen(MLP({"in": 3, "widths": [6, 4], "bn": True, "act": "tanh"}), torch.randn(32, 3))
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inputs: net.logits(inputs, 0), (x,))

    names = ["fcs.0.weight", "fcs.1.weight", "bns.0.weight", "bns.1.bias"]
    params = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters() if n in names}

    def of_params(*values):
        return functional_call(net, dict(zip(names, values)), (x.detach(),))

    assert torch.autograd.gradcheck(of_params, tuple(params[n] for n in names))


def test_gradient_through_frozen_conv_channels_is_that_of_the_forward():
    torch.manual_seed(1)
    spec = {"channels_in": 2, "size": 4, "layers": [(4, "plain"), (4, "depthwise")], "bn": True, "pool": True,
            "features": 8}
    net = _half_frozen(CNN(spec), torch.randn(32, 2, 4, 4))
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    net.logits(x, 0).sum().backward()
    assert x.grad.abs().sum() > 0  # the outputs depend on the input: the check below has something to check
    assert torch.autograd.gradcheck(lambda inputs: net.logits(inputs, 0), (x.detach().requires_grad_(),))


def test_frozen_channels_in_training_mode_compute_evaluation_mode_and_keep_statistics():
    torch.manual_seed(2)
    net = _half_frozen(MLP({"in": 3, "widths": [6], "bn": True, "act": "relu"}), torch.randn(32, 3)).float()
    bn = net.bns[0]
    frozen = net._eidetic.ownership.masks("frozen")["fcs.0"]
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    x = torch.randn(16, 3) * 3 + 1
    pre = net.fcs[0](x)
    train_out = bn(pre)
    net.eval()
    eval_out = bn(pre)
    assert torch.equal(train_out[:, frozen], eval_out[:, frozen])
    assert not torch.equal(train_out[:, ~frozen], eval_out[:, ~frozen])
    assert torch.equal(bn.running_mean[frozen], stats[0][frozen])
    assert torch.equal(bn.running_var[frozen], stats[1][frozen])


class _Subclassed(torch.nn.BatchNorm1d):
    """A BatchNorm class of the user's own: frozen channels through the forward hook, not the
    built-in layers' autograd function."""


def _mlp(subclassed: bool, seed: int) -> eidetic.ContinualNetwork:
    torch.manual_seed(seed)
    net = MLP({"in": 3, "widths": [6, 4], "bn": True, "act": "tanh"})
    if subclassed:
        net.bns = torch.nn.ModuleList(_Subclassed(bn.num_features) for bn in net.bns)
    return _half_frozen(net, torch.randn(32, 3))


def test_a_batchnorm_subclass_gets_the_same_guarantee_and_gradient_through_the_hook():
    net = _mlp(subclassed=True, seed=3)
    assert not any(isinstance(m.__dict__.get("forward"), eidetic.guarantee.norm.FrozenForward) for m in net.bns)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inputs: net.logits(inputs, 0), (x,))
    bn, frozen = net.bns[0], net._eidetic.ownership.masks("frozen")["fcs.0"]
    pre = net.fcs[0](x.detach())
    train_out = bn(pre)
    net.eval()
    assert torch.equal(train_out[:, frozen], bn(pre)[:, frozen])


def test_the_built_in_forward_computes_what_the_hook_computes():
    """The one-pass function against the hook's out-of-place composition, on the same layer and
    input: the same output bits, the same running statistics and batch count; gradients equal up
    to rounding (the frozen channels' input gradient is the same product in another kernel)."""
    net = _mlp(subclassed=False, seed=4).float()
    bn = net.bns[0]
    assert isinstance(bn.__dict__.get("forward"), eidetic.guarantee.norm.FrozenForward)
    for momentum in (0.1, None):  # None: the cumulative average, counted by num_batches_tracked
        bn.momentum = momentum
        state = {k: v.clone() for k, v in bn.state_dict().items()}
        pre = (torch.randn(16, 6) * 2 + 1).requires_grad_()
        weights = torch.randn(16, 6)
        results = []
        for path in ("function", "hook"):
            bn.load_state_dict(state)
            x = pre.detach().clone().requires_grad_()
            if path == "function":
                out = bn(x)
            else:
                plain = type(bn).forward(bn, x)
                out = eidetic.guarantee.norm._overwritten(bn, x, plain, eidetic.guarantee.norm.frozen_state(bn))
            grads = torch.autograd.grad((out * weights).sum(), (x, bn.weight, bn.bias))
            results.append((out.detach(), {k: v.clone() for k, v in bn.state_dict().items()}, grads))
        (out_f, state_f, grads_f), (out_h, state_h, grads_h) = results
        assert torch.equal(out_f, out_h)
        assert all(torch.equal(state_f[k], state_h[k]) for k in state_f)
        assert int(state_f["num_batches_tracked"]) == int(state["num_batches_tracked"]) + 1
        for a, b in zip(grads_f, grads_h):
            torch.testing.assert_close(a, b)  # approximate by nature: one product, two kernels


def _frozen_layer(dims: int, channels: int, frozen: list[bool], affine: bool, momentum: float | None,
                  seed: int) -> torch.nn.modules.batchnorm._BatchNorm:
    """A built-in BatchNorm layer in training mode with the channels ``frozen`` marks frozen, as
    :class:`~eidetic.guarantee.norm.FrozenNorms` sets it up during a task."""
    from eidetic.guarantee.guard import FrozenSlice
    from eidetic.guarantee.norm import _ATTR, FrozenChannels, FrozenForward

    torch.manual_seed(seed)
    bn = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)[max(dims - 3, 0)](
        channels, affine=affine, momentum=momentum)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        if affine:
            bn.weight.normal_()
            bn.bias.normal_()
    index = torch.tensor([c for c in range(channels) if frozen[c]], dtype=torch.long)
    slices = [FrozenSlice("bn", name, tensor, 0, index, tensor.detach()[index].clone())
              for name, tensor in (("running_mean", bn.running_mean), ("running_var", bn.running_var))]
    affine_values = [p.detach()[index].clone() if affine else None for p in (bn.weight, bn.bias)]
    bn.__dict__["forward"] = FrozenForward(bn)
    bn.__dict__[_ATTR] = FrozenChannels.of(*slices, *affine_values, bn.eps)
    return bn.train()


@st.composite
def _frozen_layers(draw):
    dims = draw(st.sampled_from([2, 3, 4, 5]))
    channels = draw(st.integers(1, 9))
    frozen = draw(st.lists(st.booleans(), min_size=channels, max_size=channels).filter(any))
    shape = (draw(st.integers(2, 5)), channels, *(draw(st.integers(1, 4)) for _ in range(dims - 2)))
    return dict(dims=dims, channels=channels, frozen=frozen, affine=draw(st.booleans()),
                momentum=draw(st.sampled_from([0.1, 0.5, None])), seed=draw(st.integers(0, 2**16))), shape


@given(layer=_frozen_layers(), channels_last=st.booleans())
def test_any_frozen_channels_one_pass_against_the_hook_and_evaluation_mode(layer, channels_last):
    """Any set of frozen channels (all of them included), any BatchNorm dimension, with and without
    affine entries, every momentum: the one-pass function gives the frozen channels evaluation
    mode's bits and the same output, statistics and gradients as the hook's composition."""
    config, shape = layer
    bn = _frozen_layer(**config)
    frozen = torch.tensor(config["frozen"])
    pre = torch.randn(shape) * 2 + 1
    if channels_last and len(shape) in (4, 5):
        pre = pre.contiguous(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
    weights = torch.randn(shape)
    state = {k: v.clone() for k, v in bn.state_dict().items()}
    results = []
    for path in ("function", "hook"):
        bn.load_state_dict(state)
        x = pre.clone().requires_grad_()
        norm = eidetic.guarantee.norm
        out = bn(x) if path == "function" else norm._overwritten(bn, x, type(bn).forward(bn, x), norm.frozen_state(bn))
        params = [p for p in (bn.weight, bn.bias) if p is not None]
        grads = torch.autograd.grad((out * weights).sum(), (x, *params))
        results.append((out.detach(), {k: v.clone() for k, v in bn.state_dict().items()}, grads))
    (out_f, state_f, grads_f), (out_h, state_h, grads_h) = results
    assert out_f.stride() == pre.stride()  # the input's memory format
    bn.eval()
    assert torch.equal(out_f[:, frozen], bn(pre)[:, frozen])
    # The free channels: the same batch statistics, bit for bit on contiguous inputs; in channels-last
    # the function reduces a contiguous copy of them and the hook the layer's own input, in another
    # order, so there they agree up to rounding.
    for k in state_f:
        _assert_same(state_f[k], state_h[k], exact=pre.is_contiguous())
        if k.startswith("running"):
            assert torch.equal(state_f[k][frozen], state[k][frozen])
    _assert_same(out_f, out_h, exact=pre.is_contiguous())
    for a, b in zip(grads_f, grads_h):
        torch.testing.assert_close(a, b)  # approximate by nature: the same products in other kernels
    for g in grads_f[1:]:
        assert not g[frozen].any()  # the frozen channels read the frozen copies


def test_every_channel_frozen_is_evaluation_mode_with_its_gradient():
    """No free channel left: the layer is evaluation mode, its gradient included."""
    bn = _frozen_layer(dims=4, channels=3, frozen=[True] * 3, affine=True, momentum=0.1, seed=5)
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    batches = int(bn.num_batches_tracked)
    out = bn(x)
    assert int(bn.num_batches_tracked) == batches + 1  # the batch is counted, as in any training step
    reference = torch.nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False)
    assert torch.equal(out, reference)
    g = torch.randn_like(out)
    # approximate by nature: the function multiplies by a precomputed scale, autograd by its own factors
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(reference, x, g)[0])


def _assert_same(a: torch.Tensor, b: torch.Tensor, exact: bool) -> None:
    if exact:
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b)
