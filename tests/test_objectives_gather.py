"""Cross-rank pieces under 2 gloo processes: memory-bank updates, Z, CMA mining and global
negatives equal one process with the concatenated batch."""

from __future__ import annotations

import os
import pickle
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crisscross.train.distributed import DistEnv, all_gather_cat
from crisscross.train.objectives.base import StepContext
from crisscross.train.objectives.contrastive import SvaCLRConfig, SvaCLRObjective, info_nce
from crisscross.train.objectives.nce import MemoryBank, PartitionConstant, find_positives

B, D, N = 2, 4, 12


def _data():
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(2 * B, D, generator=g), "index": torch.tensor([1, 5, 7, 10]),
            "neg": torch.randn(2 * B, 6, generator=g),
            **{f"{k}": torch.randn(2 * B, D, generator=g) for k in ("a1", "a2", "v1", "v2")}}


def _single() -> dict:
    data, env = _data(), DistEnv()
    bank = MemoryBank(N, D, seed=3)
    bank.update({"video": data["x"], "audio": -data["x"]}, data["index"], env)
    z = PartitionConstant().get(data["neg"], env)
    out = {"mem": bank.mem["video"].clone(), "Z": z.item(),
           "pos": find_positives(bank.mem["video"], bank.mem["audio"], "consensus", 3, env)}
    for detach in (True, False):
        q = data["a1"].clone().requires_grad_(True)
        k = data["v1"].clone().requires_grad_(True)
        loss = info_nce(q, k, 0.5, env, detach_keys=detach).mean()
        loss.backward()
        out[f"nce_{detach}"] = (loss.item(), q.grad.clone(), None if k.grad is None else k.grad.clone())
    views = {name: {"z": data[name].clone().requires_grad_(True)} for name in ("a1", "a2", "v1", "v2")}
    for view in views.values():
        view["y"] = view["z"]
    loss, _ = SvaCLRObjective(SvaCLRConfig())(views, {}, StepContext(env=env))
    loss.backward()
    out["svaclr"] = (loss.item(), {n: v["z"].grad.clone() for n, v in views.items()})
    return out


def _worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    env = DistEnv(rank=rank, world_size=2, control=dist.group.WORLD)
    data, rows = _data(), slice(rank * B, (rank + 1) * B)
    bank = MemoryBank(N, D, seed=3)
    bank.update({"video": data["x"][rows], "audio": -data["x"][rows]}, data["index"][rows], env)
    # each rank's negatives: the mean over ranks of each rank's mean
    z = PartitionConstant().get(data["neg"][rows], env)
    out = {"mem": bank.mem["video"].clone(), "Z": z.item(),
           "pos": find_positives(bank.mem["video"], bank.mem["audio"], "consensus", 3, env),
           "gathered": all_gather_cat(torch.tensor([rank]), env).tolist()}
    for detach in (True, False):
        q = data["a1"][rows].clone().requires_grad_(True)
        k = data["v1"][rows].clone().requires_grad_(True)
        loss = info_nce(q, k, 0.5, env, detach_keys=detach).mean()
        loss.backward()
        out[f"nce_{detach}"] = (loss.item(), q.grad.clone(), None if k.grad is None else k.grad.clone())
    views = {name: {"z": data[name][rows].clone().requires_grad_(True)} for name in ("a1", "a2", "v1", "v2")}
    for view in views.values():
        view["y"] = view["z"]
    loss, _ = SvaCLRObjective(SvaCLRConfig())(views, {}, StepContext(env=env))
    loss.backward()
    out["svaclr"] = (loss.item(), {n: v["z"].grad.clone() for n, v in views.items()})
    # plain pickle copies the tensors' data (the multiprocessing pickler would share them through
    # file descriptors that vanish when this process exits before the parent reads them)
    queue.put((rank, pickle.dumps(out)))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks() -> dict[int, dict]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {rank: pickle.loads(data) for rank, data in (queue.get(timeout=180) for _ in range(2))}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def test_memory_and_z_match_one_process(two_ranks):
    single = _single()
    for rank in (0, 1):
        out = two_ranks[rank]
        assert out["gathered"] == [0, 1]
        assert torch.allclose(out["mem"], single["mem"], atol=1e-6)  # identical banks on both ranks
        assert out["Z"] == pytest.approx(single["Z"], rel=1e-6)
        assert torch.equal(out["pos"], single["pos"])  # rows mined on both ranks, gathered


@pytest.mark.parametrize("detach", [True, False])
def test_global_negatives_match_one_process(two_ranks, detach):
    loss1, q_grad1, k_grad1 = _single()[f"nce_{detach}"]
    losses = [two_ranks[r][f"nce_{detach}"][0] for r in (0, 1)]
    assert sum(losses) / 2 == pytest.approx(loss1, rel=1e-6)
    for rank in (0, 1):
        rows = slice(rank * B, (rank + 1) * B)
        _, q_grad, k_grad = two_ranks[rank][f"nce_{detach}"]
        # DDP averages gradients over ranks: rank gradient / 2 == the one-process gradient
        assert torch.allclose(q_grad / 2, q_grad1[rows], atol=1e-6)
        if detach:
            assert k_grad is None and k_grad1 is None
        else:
            assert torch.allclose(k_grad / 2, k_grad1[rows], atol=1e-6)


def test_svaclr_two_ranks_match_one_process(two_ranks):
    loss1, grads1 = _single()["svaclr"]
    assert sum(two_ranks[r]["svaclr"][0] for r in (0, 1)) / 2 == pytest.approx(loss1, rel=1e-6)
    for rank in (0, 1):
        rows = slice(rank * B, (rank + 1) * B)
        for name, grad in two_ranks[rank]["svaclr"][1].items():
            assert torch.allclose(grad / 2, grads1[name][rows], atol=1e-6), name
