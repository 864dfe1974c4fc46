"""The measurement core shared by the gate and layerbench: subject, paired ratio, thread context."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import poolbench
from poolbench import measure as bench


def test_subject_closures_do_the_pooler_work_only():
    module = poolbench.create("mixed", 3, tier="vectorized")
    x = torch.randn(1, 3, 8, 8)
    subject = bench.PassSubject(module, x, list(module.parameters()), module)
    subject.closure("forward")()
    assert not module.training
    grads = subject.train_step()
    assert len(grads) == 2 and grads[0].shape == x.shape  # the input's and the one mixing logit's
    subject.closure("forward_backward")()
    assert module.training and all(p.grad is None for p in module.parameters())  # no accumulation
    assert subject.saved_bytes() > 0
    with pytest.raises(ValueError, match="pass must be one of forward, forward_backward"):
        subject.closure("backward")


def test_network_training_step_is_the_parameter_gradients_of_backward():
    """``poolbench run``'s network cells time the core's subject: parameter gradients only, as ``.backward()``."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              poolbench.create("dpp_lite_sym", 4, tier="vectorized"), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 4 * 4, 5))
    x = torch.randn(2, 3, 8, 8)
    subject = bench.PassSubject(net, x, list(net.parameters()), net, input_grad=False)
    grads = subject.train_step()
    assert not subject.x_train.requires_grad and len(grads) == len(list(net.parameters()))
    net(x).backward(subject.grad_out)
    for grad, param in zip(grads, net.parameters()):
        torch.testing.assert_close(grad, param.grad)
    assert subject.saved_bytes(exclude=net.parameters()) < subject.saved_bytes()  # the weights left out


def test_inference_only_subject_never_runs_a_training_forward():
    """Batch 1 at a 1×1 map: BatchNorm refuses train mode; inference must still be measurable."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    subject = bench.PassSubject(net, torch.randn(1, 3, 1, 1), list(net.parameters()), net, input_grad=False)
    subject.closure("forward")()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        subject.closure("forward_backward")


def test_paired_ratio_is_the_median_of_per_round_ratios():
    assert bench.paired_ratio([2.0, 4.0, 30.0], [1.0, 2.0, 3.0]) == 2.0  # one disturbed round does not move it
    assert math.isnan(bench.paired_ratio([1.0, 2.0], [1.0]))


def test_thread_context_restores_the_count():
    before = torch.get_num_threads()
    with bench.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be a positive int"):
        with bench.torch_threads(0):
            pass


def test_case_closures_time_the_case_and_the_comparator_on_one_input(monkeypatch):
    """The pooler's closure and the avg_pool2d comparator's closure run on the very same input tensor."""
    from poolbench.measure import closures

    config = bench.BenchConfig(resolution=32)
    case = next(c for c in bench.bench_cases(config, poolers=["avg"]) if c.pass_ == "forward_backward")
    seen = {}

    def comparator_spy(x):
        seen["comparator"] = x
        return F.avg_pool2d(x, 2, 2)

    monkeypatch.setattr(closures, "comparator", comparator_spy)
    module = bench.build_module(case.pooler, case.tier, case.shape[1], config)
    module.register_forward_pre_hook(lambda m, args: seen.__setitem__("pooler", args[0]))
    pooler, comparator = bench.case_closures(case, config, module=module)
    pooler(), comparator()
    # each closure owns a leaf copy (its own input gradient), of one input: equal values, the layer's input
    assert torch.equal(seen["pooler"], seen["comparator"])
    assert torch.equal(seen["pooler"], bench.make_input(case.shape, config))
    torch.testing.assert_close(bench.comparator(seen["pooler"]), F.avg_pool2d(seen["pooler"], 2, 2))
