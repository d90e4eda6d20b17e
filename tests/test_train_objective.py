"""The CrissCross objective against eqs. 1-5 computed by hand, Table 1 rows, stop-gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crisscross.train.objective import CrissCrossObjective, ObjectiveConfig, collapse_std, negative_cosine, pair_loss

VIEWS = ("v1", "v2", "a1", "a2")


def _fixed_outputs(batch: int = 5, dim: int = 7) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1234)
    return {v: (torch.randn(batch, dim, generator=g, dtype=torch.float64),
                torch.randn(batch, dim, generator=g, dtype=torch.float64)) for v in VIEWS}


def _D(p: np.ndarray, z: np.ndarray) -> float:
    """Eq. 1 by hand, averaged over the batch."""
    return float(np.mean([-(pi / np.linalg.norm(pi)) @ (zi / np.linalg.norm(zi)) for pi, zi in zip(p, z)]))


def _hand_terms(out) -> dict[str, float]:
    z = {v: out[v][0].numpy() for v in VIEWS}
    p = {v: out[v][1].numpy() for v in VIEWS}
    D = lambda a, b: _D(p[a], z[b])  # noqa: E731  D(p_a, S(z_b))
    intra = (D("v1", "v2") / 2 + D("v2", "v1") / 2 + D("a1", "a2") / 2 + D("a2", "a1") / 2) / 2   # eq. 2
    sync = (D("v1", "a1") / 2 + D("a1", "v1") / 2 + D("v2", "a2") / 2 + D("a2", "v2") / 2) / 2    # eq. 3
    asyn = (D("v1", "a2") / 2 + D("a2", "v1") / 2 + D("v2", "a1") / 2 + D("a1", "v2") / 2) / 2    # eq. 4
    return {"intra": intra, "sync": sync, "async": asyn,
            "v1v2": D("v1", "v2") / 2 + D("v2", "v1") / 2, "a1a2": D("a1", "a2") / 2 + D("a2", "a1") / 2,
            "crisscross": (intra + sync + asyn) / 3}                                             # eq. 5


def test_total_and_terms_equal_equations_1_to_5():
    out = _fixed_outputs()
    hand = _hand_terms(out)
    total, logs = CrissCrossObjective(ObjectiveConfig())(out)
    assert total.item() == pytest.approx(hand["crisscross"], abs=1e-6)
    for term in ("intra", "sync", "async"):
        assert logs[f"loss/term_{term}"].item() == pytest.approx(hand[term], abs=1e-6)
    # eq. 5 is the mean of the six symmetric pair losses (what the official code computes)
    six = np.mean([logs[f"loss/L_{k}"].item() for k in ("v1v2", "a1a2", "v1a1", "v2a2", "v1a2", "v2a1")])
    assert total.item() == pytest.approx(six, abs=1e-6)


@pytest.mark.parametrize("terms, expected", [
    (["v1v2"], lambda h: h["v1v2"]),
    (["a1a2"], lambda h: h["a1a2"]),
    (["intra"], lambda h: h["intra"]),
    (["sync"], lambda h: h["sync"]),
    (["async"], lambda h: h["async"]),
    (["sync", "intra"], lambda h: (h["sync"] + h["intra"]) / 2),
    (["sync", "async"], lambda h: (h["sync"] + h["async"]) / 2),
    (["async", "intra"], lambda h: (h["async"] + h["intra"]) / 2),
    (["v1v2", "sync", "async"], lambda h: (h["v1v2"] + h["sync"] + h["async"]) / 3),
    (["a1a2", "sync", "async"], lambda h: (h["a1a2"] + h["sync"] + h["async"]) / 3),
    (["intra", "sync", "async"], lambda h: h["crisscross"]),
])
def test_every_table1_row_is_a_config(terms, expected):
    out = _fixed_outputs()
    cfg = ObjectiveConfig.from_dict({"terms": terms})
    needed = {k: out[k] for k in cfg.views}
    total, _ = CrissCrossObjective(cfg)(needed)
    assert total.item() == pytest.approx(expected(_hand_terms(out)), abs=1e-6)


def test_uni_modal_rows_need_one_modality_and_sum_reduction():
    assert ObjectiveConfig(terms=["v1v2"]).modalities == ["video"]
    assert ObjectiveConfig(terms=["a1a2"]).views == ["a1", "a2"]
    assert ObjectiveConfig(terms=["sync"]).modalities == ["video", "audio"]
    out = _fixed_outputs()
    h = _hand_terms(out)
    total, _ = CrissCrossObjective(ObjectiveConfig(terms=["sync", "intra"], reduce="sum"))(out)
    assert total.item() == pytest.approx(h["sync"] + h["intra"], abs=1e-6)
    with pytest.raises(ValueError, match="unknown objective terms"):
        ObjectiveConfig(terms=["intra", "cross"])
    with pytest.raises(KeyError):
        CrissCrossObjective(ObjectiveConfig())({"v1": out["v1"], "v2": out["v2"]})


def test_stop_gradient_gradients_flow_only_through_the_predictor_branch():
    """dL/dz1 must be W^T dD(p1, const z2)/dp1 / 2: no gradient through z1 as a target."""
    torch.manual_seed(0)
    batch, dim = 4, 6
    predictor = torch.nn.Linear(dim, dim, bias=False).double()
    z1 = torch.randn(batch, dim, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(batch, dim, dtype=torch.float64, requires_grad=True)
    p1, p2 = predictor(z1), predictor(z2)
    pair_loss(p1, z1, p2, z2).backward()

    def d_negcos_dp(p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # gradient of -mean_i cos(p_i, c_i) with respect to p (c constant), written out by hand
        pn, cn = p.norm(dim=1, keepdim=True), c.norm(dim=1, keepdim=True)
        cos = (p * c).sum(1, keepdim=True) / (pn * cn)
        return -(c / (pn * cn) - cos * p / pn**2) / p.shape[0]

    with torch.no_grad():
        W = predictor.weight
        expected_z1 = d_negcos_dp(p1, z2) @ W / 2
        expected_z2 = d_negcos_dp(p2, z1) @ W / 2
    assert torch.allclose(z1.grad, expected_z1, atol=1e-12)
    assert torch.allclose(z2.grad, expected_z2, atol=1e-12)
    # without the stop-gradient the target path would add a non-zero term: the check can fail
    z1b = z1.detach().clone().requires_grad_(True)
    loss_no_sg = -torch.nn.functional.cosine_similarity(predictor(z2.detach()), z1b, dim=-1).mean()
    loss_no_sg.backward()
    assert z1b.grad.abs().max() > 1e-3
    # and D itself detaches z
    z = torch.randn(3, 4, requires_grad=True)
    assert negative_cosine(torch.randn(3, 4, requires_grad=True), z).grad_fn is not None
    negative_cosine(torch.randn(3, 4, requires_grad=True), z).backward()
    assert z.grad is None


def test_collapse_monitor_healthy_vs_collapsed():
    dim = 256
    healthy = collapse_std(torch.randn(4096, dim))
    assert healthy.item() == pytest.approx(1 / dim**0.5, rel=0.05)
    collapsed = collapse_std(torch.ones(64, dim) + 1e-6 * torch.randn(64, dim))
    assert collapsed.item() < 1e-4
