"""Optimizers and schedules against their definitions."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sslkit import config
from sslkit.train.optim import LARS, build_optimizer, build_scheduler, lr_factor, param_groups, scaled_lr


def _optim(**kw) -> config.OptimConfig:
    return config.build({"optim": kw}).optim


def test_linear_scaling_rule():
    assert scaled_lr(_optim(lr=0.03), 256) == pytest.approx(0.03)
    assert scaled_lr(_optim(lr=0.03), 4096) == pytest.approx(0.48)
    assert scaled_lr(_optim(lr=0.06, lr_scaling="none"), 512) == pytest.approx(0.06)


def test_warmup_then_cosine_values():
    # 10 steps: 2 warmup (0.5, 1.0), then cosine over the remaining 8 steps to min 0.1
    f = [lr_factor(s, 10, 2, "cosine", 0.1) for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    assert f[2] == pytest.approx(1.0)
    assert f[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lr_factor(10, 10, 2, "cosine", 0.1) == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[1:], f[2:]))
    assert lr_factor(7, 10, 0, "constant") == 1.0


def test_scheduler_is_a_function_of_the_step_and_resumes():
    model = nn.Linear(3, 2)
    cfg = _optim(lr=0.1, warmup_epochs=1, lr_scaling="none")
    opt = build_optimizer(model, cfg, 256)
    sched = build_scheduler(opt, cfg, total_steps=20, steps_per_epoch=4)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # resume as the engine does: optimizer state, then scheduler state
    opt2 = build_optimizer(model, cfg, 256)
    sched2 = build_scheduler(opt2, cfg, total_steps=20, steps_per_epoch=4)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1 * lr_factor(12, 20, 4, "cosine"))
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1 * lr_factor(13, 20, 4, "cosine"))
    assert lrs[0] == pytest.approx(0.1 * 0.25) and lrs[3] == pytest.approx(0.1)
    assert lrs[11] == pytest.approx(0.1 * lr_factor(11, 20, 4, "cosine"))


def test_lars_and_exclusions():
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    frozen = nn.Linear(2, 2)
    frozen.weight.requires_grad_(False)
    net.add_module("frozen", frozen)
    groups = param_groups(net, _optim(name="lars", weight_decay=1e-2))
    names = {id(p): n for n, p in net.named_parameters()}
    regular = {names[id(p)] for p in groups[0]["params"]}
    excluded = {names[id(p)] for p in groups[1]["params"]}
    assert regular == {"0.weight"}  # only matrices get wd and LARS adaptation
    assert excluded == {"0.bias", "1.weight", "1.bias", "frozen.bias"}
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lars_exclude"]
    # SGD keeps weight decay on every parameter (MoCo-v2), unless asked otherwise
    assert len(param_groups(net, _optim(name="sgd"))) == 1


def test_lars_step_matches_the_formula():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(3, 4))
    b = nn.Parameter(torch.randn(3))
    w.grad, b.grad = torch.randn(3, 4), torch.randn(3)
    w0, b0, gw, gb = w.detach().clone(), b.detach().clone(), w.grad.clone(), b.grad.clone()
    lr, wd, mom, eta = 0.5, 0.01, 0.9, 0.001
    opt = LARS([{"params": [w], "lars_exclude": False, "weight_decay": wd},
                {"params": [b], "lars_exclude": True, "weight_decay": 0.0}],
               lr=lr, momentum=mom, eta=eta)
    opt.step()
    d = gw + wd * w0
    q = eta * w0.norm() / d.norm()
    torch.testing.assert_close(w.detach(), w0 - lr * d * q)
    torch.testing.assert_close(b.detach(), b0 - lr * gb)  # no wd, no adaptation
    # second step uses the momentum buffer mu = 0.9 mu + g'
    w.grad = gw.clone()
    mu1 = d * q
    w1 = w.detach().clone()
    opt.step()
    d2 = gw + wd * w1
    mu2 = mom * mu1 + d2 * (eta * w1.norm() / d2.norm())
    torch.testing.assert_close(w.detach(), w1 - lr * mu2)
