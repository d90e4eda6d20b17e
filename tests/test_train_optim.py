"""Four parameter groups, the one LR function (Table S10), and LARC in clip mode."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crisscross.train.models import CrissCrossModel, ModelConfig
from crisscross.train.optim import LARC, Schedule, build_optimizer, learning_rate, parameter_groups, set_learning_rates

KS = Schedule(lr=2e-4, end_lr=0.0, pred_lr=2e-3, warmup_steps=100, total_steps=1000)


def test_warmup_then_cosine_for_base_constant_for_predictors():
    assert learning_rate(0, "video_base", KS) == 0.0
    assert learning_rate(50, "audio_base", KS) == pytest.approx(1e-4)
    assert learning_rate(100, "video_base", KS) == pytest.approx(2e-4)
    assert learning_rate(550, "video_base", KS) == pytest.approx(1e-4)        # cosine midpoint
    assert learning_rate(1000, "video_base", KS) == pytest.approx(0.0, abs=1e-15)
    k400 = Schedule(lr=2e-4, end_lr=1e-4, pred_lr=2e-3, warmup_steps=0, total_steps=10)
    assert learning_rate(10, "video_base", k400) == pytest.approx(1e-4)
    assert learning_rate(5, "video_base", k400) == pytest.approx(1.5e-4)
    for step in (0, 37, 999):
        assert learning_rate(step, "video_pred", KS) == learning_rate(step, "audio_pred", KS) == 2e-3
    rates = [learning_rate(s, "video_base", KS) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))                      # monotone decay


def test_four_groups_cover_all_trainable_parameters_once():
    model = CrissCrossModel(ModelConfig.tiny())
    groups = parameter_groups(model)
    assert [g["name"] for g in groups] == ["video_base", "video_pred", "audio_base", "audio_pred"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in model.video.predictor.parameters()} == {id(p) for p in groups[1]["params"]}
    optimizer = build_optimizer(groups, weight_decay=1e-4, betas=(0.9, 0.999), larc=False, larc_trust=1e-3,
                                larc_clip=True)
    assert isinstance(optimizer, torch.optim.Adam)
    rates = set_learning_rates(optimizer, 100, KS)
    assert rates == {"video_base": pytest.approx(2e-4), "video_pred": 2e-3, "audio_base": pytest.approx(2e-4),
                     "audio_pred": 2e-3}
    model.audio.requires_grad_(False)  # uni-modal ablation: the frozen branch has no group
    assert [g["name"] for g in parameter_groups(model)] == ["video_base", "video_pred"]


def _larc_step(trust: float, clip: bool, lr: float, wd: float, w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    p = torch.nn.Parameter(w.clone())
    p.grad = g.clone()
    sgd = torch.optim.SGD([p], lr=lr, weight_decay=wd)
    LARC(sgd, trust_coefficient=trust, clip=clip).step()
    assert sgd.param_groups[0]["weight_decay"] == wd  # restored after LARC absorbed it
    return p.detach()


def test_larc_clip_mode_matches_apex_formula():
    w = torch.tensor([3.0, 4.0])        # |w| = 5
    g = torch.tensor([0.6, 0.8])        # |g| = 1
    lr, wd, trust = 0.1, 0.01, 1e-3
    local_lr = trust * 5 / (1 + 5 * wd + 1e-8)
    factor = min(local_lr / lr, 1.0)
    expected = w - lr * factor * (g + wd * w)
    assert torch.allclose(_larc_step(trust, True, lr, wd, w, g), expected)
    # a tiny LR is not raised: clip mode never exceeds the optimizer's LR
    assert torch.allclose(_larc_step(trust, True, 1e-6, wd, w, g), w - 1e-6 * (g + wd * w))
    # scale mode multiplies instead
    assert torch.allclose(_larc_step(trust, False, lr, wd, w, g), w - lr * local_lr * (g + wd * w))
    # zero gradients are left alone (no decay applied, as apex)
    assert torch.allclose(_larc_step(trust, True, lr, wd, w, torch.zeros(2)), w)


def test_larc_wraps_adam_with_state_dict_round_trip():
    model = torch.nn.Linear(4, 2)
    groups = [{"name": "video_base", "params": list(model.parameters())}]
    opt = build_optimizer(groups, weight_decay=1e-4, betas=(0.9, 0.999), larc=True, larc_trust=1e-3, larc_clip=True)
    assert isinstance(opt, LARC)
    set_learning_rates(opt, 10, Schedule(1e-3, 0.0, 1e-2, 5, 20))
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    state = opt.state_dict()
    assert state["param_groups"][0]["name"] == "video_base" and len(state["state"]) == 2
    assert all(math.isfinite(p.abs().sum().item()) for p in model.parameters())


@settings(max_examples=200, deadline=None)
@given(lr=st.floats(1e-6, 1.0), end_fraction=st.floats(0.0, 1.0), warmup=st.integers(0, 50),
       total=st.integers(1, 500), step=st.integers(0, 600))
def test_base_lr_stays_between_zero_and_peak_and_ends_at_end_lr(lr, end_fraction, warmup, total, step):
    total = max(total, warmup + 1)
    schedule = Schedule(lr=lr, end_lr=lr * end_fraction, pred_lr=10 * lr, warmup_steps=warmup, total_steps=total)
    value = learning_rate(step, "audio_base", schedule)
    assert 0.0 <= value <= lr * (1 + 1e-12)
    if step >= warmup:
        assert value >= schedule.end_lr * (1 - 1e-12)
    if step >= total:
        assert value == pytest.approx(schedule.end_lr, rel=1e-9, abs=1e-15)
    assert learning_rate(step, "audio_pred", schedule) == 10 * lr


def test_warmup_from_a_start_lr_and_constant_schedule():
    from crisscross.train.optim import Schedule, learning_rate

    s = Schedule(lr=0.64, end_lr=0.1, pred_lr=0.0, warmup_steps=10, total_steps=100, warmup_start_lr=0.064)
    assert learning_rate(0, "video_base", s) == pytest.approx(0.064)
    assert learning_rate(5, "video_base", s) == pytest.approx(0.064 + 0.576 / 2)
    assert learning_rate(10, "video_base", s) == pytest.approx(0.64)
    assert learning_rate(100, "video_base", s) == pytest.approx(0.1)  # cosine to end_lr
    constant = Schedule(lr=2e-4, end_lr=0.0, pred_lr=0.0, warmup_steps=0, total_steps=100, kind="constant")
    assert [learning_rate(k, "audio_base", constant) for k in (0, 50, 99)] == [2e-4] * 3


def test_sgd_optimizer_with_momentum():
    from crisscross.train.optim import build_optimizer

    param = torch.nn.Parameter(torch.ones(2))
    opt = build_optimizer([{"name": "video_base", "params": [param]}], weight_decay=1e-5, betas=(0.9, 0.999),
                          larc=False, larc_trust=1e-3, larc_clip=True, name="sgd", momentum=0.9)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="optim.name"):
        build_optimizer([{"name": "video_base", "params": [param]}], weight_decay=0, betas=(0.9, 0.999),
                        larc=False, larc_trust=1e-3, larc_clip=True, name="lamb")
