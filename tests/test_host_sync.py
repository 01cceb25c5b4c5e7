"""No host sync on any training path (issue 18, item 4): no call reads a device value back. A value read
is aten::_local_scalar_dense (what .item(), bool(t), int(t) and is_nonzero run); a TorchDispatchMode sees
every one the Python side makes, and fails the call that makes it. Checked for every op (training and
evaluation, drawn and explicit noise), every module, and a training step (forward, backward, SGD) of
every zoo model, plain and checkpointed, on the CPU and, where present, on a GPU.

On the CPU a value read is no sync, and the C++ ops still check explicit draws' values there (reading the
tensor's memory, which the mode cannot see and which costs no sync); what this test keeps out is the Python
side reading values, which on a GPU would stall the host every call."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import cifarops
import cifarops.functional as F
import cifarops.models as models

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and "cuda" in cifarops.available_backends("cuda") else [])


class NoValueReads(TorchDispatchMode):
    """Raises at the first read of a tensor's value on the host."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError(f"a host read of a tensor value (aten::_local_scalar_dense) on {args[0].device}")
        return func(*args, **(kwargs or {}))


def train_call(fn, *inputs):
    """fn(*inputs) forward and backward under the mode."""
    with NoValueReads():
        y = fn(*inputs)
        torch.autograd.grad(y, [t for t in inputs if t.requires_grad], torch.ones_like(y))


def x(device, *shape):
    return torch.randn(*shape, device=device, requires_grad=True)


OPS = {
    "shake_drop batch": lambda d: (lambda h: F.shake_drop(h, h.detach() * 2, p_drop=0.5), x(d, 4, 8, 5, 5)),
    "shake_drop channel": lambda d: (lambda h: F.shake_drop(h, None, p_drop=0.5, level="channel"), x(d, 4, 8, 5, 5)),
    "shake_drop pixel": lambda d: (lambda h: F.shake_drop(h, None, p_drop=0.5, level="pixel"), x(d, 4, 8, 5, 5)),
    "shake_drop eval": lambda d: (lambda h: F.shake_drop(h, h.detach(), p_drop=0.5, training=False), x(d, 4, 8, 5, 5)),
    "shake_drop explicit": lambda d: (lambda h: F.shake_drop(h, None, p_drop=0.5, gate=torch.ones(4, device=d),
                                                             alpha=torch.zeros(4, device=d),
                                                             beta=torch.full((4,), 0.5, device=d)), x(d, 4, 8, 5, 5)),
    "shake_shake": lambda d: (lambda h: F.shake_shake(h, h * 2), x(d, 4, 8, 5, 5)),
    "shake_shake explicit": lambda d: (lambda h: F.shake_shake(h, h * 2, alpha=torch.rand(4, device=d),
                                                               beta=torch.rand(4, device=d)), x(d, 4, 8, 5, 5)),
    "shake_shake eval": lambda d: (lambda h: F.shake_shake(h, h * 2, training=False), x(d, 4, 8, 5, 5)),
    "maxout": lambda d: (lambda h: F.maxout(h, 2), x(d, 4, 8, 5, 5)),
    "maxout strided": lambda d: (lambda h: F.maxout(h, 4, grouping="strided"), x(d, 4, 8, 5, 5)),
    "probabilistic_maxout": lambda d: (lambda h: F.probabilistic_maxout(h, 2), x(d, 4, 8, 5, 5)),
    "probabilistic_maxout eval": lambda d: (lambda h: F.probabilistic_maxout(h, 2, training=False), x(d, 4, 8, 5, 5)),
    "fmp drawn": lambda d: (lambda h: F.fractional_max_pool2d(h, 2, output_size=(6, 6)), x(d, 2, 4, 9, 9)),
    "fmp explicit samples": lambda d: (lambda h: F.fractional_max_pool2d(
        h, 2, output_size=(6, 6), _random_samples=torch.rand(2, 4, 2, device=d)), x(d, 2, 4, 9, 9)),
    "fmp explicit boundaries": lambda d: (lambda h: F.fractional_max_pool2d(
        h, output_size=(6, 6), regions="disjoint",
        boundaries=torch.tensor([0, 2, 3, 5, 6, 8, 9], device=d).expand(2, 4, 2, 7)), x(d, 2, 4, 9, 9)),
    "fmp graham random": lambda d: (lambda h: F.fractional_max_pool2d(
        h, output_size=(6, 6), regions="overlapping", sequence="random", per_image=True), x(d, 2, 4, 9, 9)),
    "fmp return_indices": lambda d: (lambda h: F.fractional_max_pool2d(
        h, 2, output_ratio=0.7, return_indices=True)[0], x(d, 2, 4, 9, 9)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(OPS))
def test_op_reads_no_value_back(device, case):
    fn, h = OPS[case](device)
    train_call(fn, h)


MODULES = {
    "ShakeDrop": lambda: cifarops.ShakeDrop(0.5),
    "ShakeShake": lambda: cifarops.ShakeShake(),
    "Maxout": lambda: cifarops.Maxout(2),
    "ProbabilisticMaxout": lambda: cifarops.ProbabilisticMaxout(2),
    "FractionalMaxPool2d": lambda: cifarops.FractionalMaxPool2d(2, output_size=6),
    # a buffer of explicit samples, passed every call
    "FractionalMaxPool2d samples": lambda: cifarops.FractionalMaxPool2d(2, output_size=6,
                                                                        _random_samples=torch.rand(2, 4, 2)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_module_reads_no_value_back(device, name, training):
    layer = MODULES[name]().to(device).train(training)
    h = x(device, 2, 4, 9, 9)
    if name == "ShakeDrop":
        train_call(lambda t: layer(t, t.detach()), h)
    elif name == "ShakeShake":
        train_call(lambda t: layer(t, t * 2), h)
    else:
        train_call(layer, h)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("checkpoint", [False, "full"], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("name", models.names())
def test_zoo_training_step_reads_no_value_back(device, name, checkpoint):
    torch.manual_seed(0)
    model = models.create(name, checkpoint=checkpoint, **models.SMALL[name]).to(device)
    size = 32 if not name.startswith("fmp") else model.input_size
    images = torch.randn(2, 3, size, size, device=device)
    labels = torch.tensor([1, 7], device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    with NoValueReads():
        for _ in range(2):  # the second step has the momentum buffers
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        with torch.no_grad():
            model(images)


def test_the_mode_catches_a_value_read():
    """The oracle itself: a read of a tensor's value is what the mode fails on."""
    t = torch.ones(3, requires_grad=True)
    with pytest.raises(AssertionError, match="_local_scalar_dense"):
        with NoValueReads():
            if (t * 2).sum() > 0:
                pass


@pytest.mark.parametrize("check_values", [False, True], ids=["default", "CIFAROPS_CHECK_VALUES=1"])
def test_explicit_draws_on_a_device_are_read_only_when_asked(monkeypatch, check_values):
    """The GPU path of explicit FMP draws, on the meta device (not the CPU, whose ops read the values in C++):
    by default nothing is read back; CIFAROPS_CHECK_VALUES=1 (F.CHECK_DEVICE_VALUES) checks the values, a read."""
    monkeypatch.setattr(F, "CHECK_DEVICE_VALUES", check_values)
    h = torch.randn(2, 4, 9, 9, device="meta", requires_grad=True)
    samples = torch.rand(2, 4, 2, device="meta")
    boundaries = torch.zeros(2, 4, 2, 7, dtype=torch.int64, device="meta")
    for call in (lambda: F.fractional_max_pool2d(h, 2, output_size=(6, 6), _random_samples=samples),
                 lambda: cifarops.FractionalMaxPool2d(2, output_size=6, _random_samples=samples)(h),
                 lambda: F.fractional_max_pool2d(h, output_size=(6, 6), regions="disjoint", boundaries=boundaries)):
        if check_values:
            with pytest.raises(AssertionError, match="_local_scalar_dense"):
                with NoValueReads():
                    call()
        else:
            with NoValueReads():
                assert call().shape == (2, 4, 6, 6)
