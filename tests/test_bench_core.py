"""The measurement core shared by the gate and layerbench: subject, paired ratio, thread context."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import poolbench
from poolbench import bench


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


def test_case_closures_time_the_case_and_the_comparator_on_one_input():
    config = bench.BenchConfig(resolution=32)
    case = next(c for c in bench.bench_cases(config, poolers=["avg"]) if c.pass_ == "forward_backward")
    pooler, comparator = bench.case_closures(case, config)
    pooler(), comparator()
    x = bench.make_input(case.shape, config)
    torch.testing.assert_close(bench.comparator(x), F.avg_pool2d(x, 2, 2))
