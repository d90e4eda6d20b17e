"""SvaCLR's SoftInfoNCE and STiCA's objective against hand-computed values (docs/methods.md)."""

from __future__ import annotations

import pytest
import torch

from crisscross.train.objectives.base import StepContext
from crisscross.train.objectives.contrastive import (
    STiCAConfig,
    STiCAObjective,
    SvaCLRConfig,
    SvaCLRObjective,
    info_nce,
    nce_mean,
)

ZA = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
ZV = torch.tensor([[0.6, 0.8], [0.8, -0.6]])


def test_info_nce_by_hand():
    per_sample = info_nce(ZA, ZV, 1.0, detach_keys=False)
    assert per_sample.tolist() == pytest.approx([0.798139, 1.620417], abs=1e-6)
    assert info_nce(ZA, ZV, 0.1, detach_keys=False).mean().item() == pytest.approx(8.063464, abs=1e-5)
    za = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    zv = torch.tensor([[0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    a2v, v2a = nce_mean(za, zv, 1.0, None, False), nce_mean(zv, za, 1.0, None, False)
    assert a2v.item() == pytest.approx(0.886089, abs=1e-6)
    assert v2a.item() == pytest.approx(0.896249, abs=1e-6)
    assert ((a2v + v2a) / 2).item() == pytest.approx(0.891169, abs=1e-6)


def _svaclr_outputs(requires_grad: bool = False) -> dict:
    views = {"a1": torch.eye(2), "a2": torch.tensor([[0.8, 0.6], [-0.6, 0.8]]),
             "v1": ZV.clone(), "v2": torch.eye(2)}
    out = {}
    for name, x in views.items():
        x = x.clone().requires_grad_(requires_grad)
        out[name] = {"z": x, "y": x}  # lambda computed on the same (unit) vectors
    return out


def test_softinfonce_reading_r1_by_hand():
    objective = SvaCLRObjective(SvaCLRConfig(temperature=1.0))
    assert objective.views == ("v1", "v2", "a1", "a2")
    total, logs = objective(_svaclr_outputs(), {}, StepContext())
    assert total.item() == pytest.approx(0.961476, abs=1e-6)
    assert logs["lambda/a1v1"].item() == pytest.approx(1.0)
    assert logs["lambda/a1v2"].item() == pytest.approx((1.491825 + 4.953032) / 2, abs=1e-5)
    assert logs["lambda/a2v1"].item() == pytest.approx((1.433329 + 0.697676) / 2, abs=1e-5)
    assert logs["lambda/a2v2"].item() == pytest.approx((1.221403 + 4.055200) / 2, abs=1e-5)
    assert logs["loss/L_a1v2"].item() == pytest.approx(0.313262, abs=1e-6)
    plain, _ = SvaCLRObjective(SvaCLRConfig(temperature=1.0, mode="none"))(_svaclr_outputs(), {}, StepContext())
    assert plain.item() == pytest.approx(0.720958, abs=1e-6)


def test_softinfonce_reading_r2_by_hand():
    objective = SvaCLRObjective(SvaCLRConfig(temperature=1.0, mode="soft_targets"))
    total, logs = objective(_svaclr_outputs(), {}, StepContext())
    want = {"a1v1": 1.209278, "a1v2": 0.582203, "a2v1": 0.585495, "a2v2": 0.592766}
    for pair, value in want.items():
        assert logs[f"loss/L_{pair}"].item() == pytest.approx(value, abs=1e-5), pair
    assert total.item() == pytest.approx(0.742436, abs=1e-5)


def test_lambda_carries_no_gradient_when_detached():
    out = _svaclr_outputs(requires_grad=True)
    # y separate from z: with detach_lambda the loss does not depend on y at all
    for view in out.values():
        view["y"] = view["z"].detach().clone().requires_grad_(True)
    total, _ = SvaCLRObjective(SvaCLRConfig(temperature=1.0))(out, {}, StepContext())
    total.backward()
    assert all(view["y"].grad is None for view in out.values())
    assert all(view["z"].grad is not None for view in out.values())
    out = _svaclr_outputs(requires_grad=True)
    for view in out.values():
        view["y"] = view["z"].detach().clone().requires_grad_(True)
    total, _ = SvaCLRObjective(SvaCLRConfig(temperature=1.0, detach_lambda=False))(out, {}, StepContext())
    total.backward()
    assert out["a2"]["y"].grad is not None and out["a2"]["y"].grad.abs().sum() > 0


def test_stica_small_to_large_term_by_hand():
    # queries: small crops (the test vectors' audio), keys: large crops (video), tau_within 0.5
    per_sample = info_nce(ZA, ZV, 0.5, detach_keys=True)
    assert per_sample.tolist() == pytest.approx([0.913015, 2.859033], abs=1e-6)
    assert per_sample.mean().item() == pytest.approx(1.886024, abs=1e-6)


def _crops(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda: torch.randn(3, 4, generator=g)  # noqa: E731
    return {"s_large": [r(), r()], "s_small": [r() for _ in range(4)], "t_large": [r(), r()], "t_small": [r()]}


def test_stica_bookkeeping():
    objective = STiCAObjective(STiCAConfig())
    c1, c2 = _crops(1), _crops(2)
    terms = objective.crop_terms(c1, c2, None)
    assert len(terms) == 1 + 8 + 1 + 2
    g = torch.Generator().manual_seed(3)
    out = {"v1": {"z": torch.randn(3, 4, generator=g), "crops": c1}, "v2": {"z": torch.randn(3, 4, generator=g), "crops": c2},
           "a1": {"z": torch.randn(3, 4, generator=g)}}
    total, logs = objective(out, {}, StepContext())
    assert total.item() == pytest.approx(0.5 * logs["loss/L_av"].item() + 0.5 * torch.stack(terms).mean().item(), rel=1e-6)
    # tau_cross only in the audio-visual terms: changing tau_within leaves L_av as it is
    other, other_logs = STiCAObjective(STiCAConfig(tau_within=0.2))(out, {}, StepContext())
    assert other_logs["loss/L_av"].item() == pytest.approx(logs["loss/L_av"].item(), rel=1e-7)
    assert other_logs["loss/L_crop"].item() != pytest.approx(logs["loss/L_crop"].item(), rel=1e-3)
    # the large-large term is crop #2 only (the official code); "all" adds crop #1
    assert len(STiCAObjective(STiCAConfig(ll_pairs="all")).crop_terms(c1, c2, None)) == 14
    # no crops: the loss is the cross-modal term alone
    plain = {k: {"z": v["z"]} for k, v in out.items()}
    total_plain, _ = objective(plain, {}, StepContext())
    assert total_plain.item() == pytest.approx(logs["loss/L_av"].item(), rel=1e-7)
