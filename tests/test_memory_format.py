"""The GPU data path's options keep the guarantee: networks and batches in the channels-last
memory format, alone and with bf16 or fp16 autocast task by task, as properties over
architectures, optimizers, pruning and seeds. On a GPU: ``pytest tests/test_memory_format.py
--device cuda`` (skipped where there is none)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import eidetic
from eidetic import zoo
from eidetic.testing import assert_never_forgets, optimizers, runs

from models import CNN, ResNet, input_shape
from strategies import cnn_specs, resnet_specs

LAST = torch.channels_last
# oneDNN's AVX2 kernel for the weight gradient of a 1x1 convolution of stride 2 in channels-last
# with fewer than 8 input channels writes past its workspace and corrupts the heap
# (uxlfoundation/oneDNN#6035, open; plain PyTorch crashes too). On such CPUs the residual nets'
# blocks keep stride 1 on the CPU, and the zoo's ResNet is 8 channels wide.
ONEDNN_6035 = torch.backends.cpu.get_cpu_capability() == "AVX2"
examples = settings(max_examples=max(10, settings.default.max_examples // 8))
precisions = st.lists(st.sampled_from(["bf16", "fp16", None]), min_size=3, max_size=3)


def _sampler(shape):
    return lambda g, n: torch.randn(n, *shape, generator=g).contiguous(memory_format=LAST)


def _run(build, shape, optimizer, plans, seed, device, precision=None):
    def factory():
        return build().to(device).to(memory_format=LAST)

    kwargs = None if precision is None else (lambda t: {"precision": precision[t % len(precision)]})
    net = assert_never_forgets(factory, input_sampler=_sampler(shape), tasks=plans, optimizers=optimizer, seed=seed,
                               train_kwargs=kwargs)
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.weight.is_contiguous(memory_format=LAST), "training put the weights back in the NCHW format"


@given(spec=cnn_specs().filter(lambda s: s["dims"] == 2), optimizer=optimizers(), plans=runs,
       seed=st.integers(0, 2**16))
@examples
def test_channels_last_cnn_never_forgets(spec, optimizer, plans, seed, device):
    _run(lambda: CNN(spec), input_shape(CNN, spec), optimizer, plans, seed, device)


@given(spec=resnet_specs(), optimizer=optimizers(), plans=runs, seed=st.integers(0, 2**16), precision=precisions)
@examples
def test_channels_last_residual_net_under_autocast_never_forgets(spec, optimizer, plans, seed, precision, device):
    """Each task in its own precision (bf16, fp16 with a gradient scaler, or float32)."""
    if ONEDNN_6035 and device.type == "cpu":
        spec = {**spec, "blocks": [(channels, 1) for channels, _ in spec["blocks"]]}
    _run(lambda: ResNet(spec), input_shape(ResNet, spec), optimizer, plans, seed, device, precision)


def test_a_zoo_resnet_channels_last_in_bf16_and_fp16_never_forgets(device):
    choice = eidetic.testing.OptimizerChoice("SGD", (("lr", 0.05), ("momentum", 0.9), ("nesterov", True)), True)
    width = 8 if ONEDNN_6035 else 2
    _run(lambda: zoo.build_model("resnet18-cifar", (3, 8, 8), width=width), (3, 8, 8), choice, 3, 0, device,
         ["bf16", "fp16", None])
