"""One distributed runtime for every multi-process stage: pretraining and full finetuning.

A plain ``python`` run is a world of one; under ``torchrun`` (WORLD_SIZE, RANK, LOCAL_RANK set)
each process joins the process group: NCCL when it computes on a GPU, gloo on the CPU. A GPU
process uses ``cuda:LOCAL_RANK`` (``torch.cuda.set_device`` is called before anything touches
CUDA, so library code that asks for the "current" device gets the same one); DDP is built with
``device_ids`` on CUDA. Under NCCL a side gloo group (``DistEnv.control``) carries the small
host-side messages (stop flags, loader states, gathered Python objects), which NCCL cannot send.

``resolve_device`` is the one place where a device setting (``auto``, ``cpu``, ``cuda``,
``cuda:N``) becomes a ``torch.device``; the trainer, the finetuner, the evaluation loaders and
the encoders' loader all go through it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(requested: str | torch.device = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` -> CUDA when a GPU is visible, else the CPU; ``cuda`` -> ``cuda:<local_rank>``
    (``LOCAL_RANK`` from torchrun by default); ``cuda:N`` and ``cpu`` as given.

    A GPU that was asked for but is not there is an error, never a silent fallback to the CPU.
    """
    name = str(requested).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device {requested!r} is not one of {DEVICE_CHOICES}") from exc
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"device {requested!r} is not one of {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} asked for a GPU but no CUDA device is visible "
                           f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    index = device.index if device.index is not None else (_local_rank() if local_rank is None else local_rank)
    if index >= torch.cuda.device_count():
        raise RuntimeError(f"device {requested!r} resolves to cuda:{index} but only {torch.cuda.device_count()} "
                           "CUDA device(s) are visible (check CUDA_VISIBLE_DEVICES and --nproc-per-node)")
    return torch.device("cuda", index)


@dataclass
class DistEnv:
    """This process's place in the world, and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    control: Any = None  # a gloo group for small CPU messages (stop flags, loader states)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=self.control)


def setup_distributed(device: str | Mapping[str, Any] = "auto", *, num_threads: int = 0) -> DistEnv:
    """Join the process group started by torchrun (if any) and pick this process's device.

    ``device`` is a device setting, or a config's ``run`` section (its ``device`` and
    ``num_threads`` keys). NCCL on GPUs, gloo on CPUs; a world of one starts no process group.
    """
    if isinstance(device, Mapping):
        num_threads = int(device.get("num_threads") or 0)
        device = device.get("device", "auto")
    if num_threads:
        torch.set_num_threads(int(num_threads))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), _local_rank()
    if world_size > 1 and str(device).strip().lower().startswith("cuda:"):
        raise ValueError(f"device={device} under torchrun: every process uses cuda:LOCAL_RANK; give device=cuda "
                         "or auto (choose the GPUs with CUDA_VISIBLE_DEVICES)")
    resolved = resolve_device(device, local_rank)
    on_gpu = resolved.type == "cuda"
    if on_gpu:
        torch.cuda.set_device(resolved)  # before any CUDA work: "current device" means this rank's GPU
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest conv3d
        torch.set_float32_matmul_precision("high")
    env = DistEnv(rank, world_size, local_rank, resolved)
    if world_size > 1:
        if not dist.is_initialized():
            # device_id binds NCCL to this rank's GPU at once (no guessing from the current device)
            backend = "nccl" if on_gpu else "gloo"
            store = _attempt_store(rank, world_size)
            options = {"device_id": resolved} if on_gpu else {}
            if store is None:
                dist.init_process_group(backend, **options)
            else:
                dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, **options)
        # NCCL cannot reduce CPU tensors; a side gloo group carries host-side control messages
        env.control = dist.new_group(backend="gloo") if on_gpu else dist.group.WORLD
    return env


def _attempt_store(rank: int, world_size: int) -> dist.Store | None:
    """Under torchrun with the agent's store: that store with a prefix for this restart attempt.

    torchrun (--max-restarts) keeps its agent's TCPStore across restarts, and this PyTorch's env://
    init uses it without a per-attempt prefix, so the restarted ranks can read the dead group's
    keys: rank 1 then dials the killed rank 0's gloo port ("Connection refused") or waits forever
    (tests/test_train_faults.py, lost rank). A prefix per TORCHELASTIC_RESTART_COUNT gives every
    attempt fresh keys. None elsewhere: the default env:// init is right."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        return None
    agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False)
    return dist.PrefixStore(f"/crisscross/attempt_{os.environ['TORCHELASTIC_RESTART_COUNT']}", agent)


def shutdown(env: DistEnv) -> None:
    """Leave the process group (every rank, at the end of a run)."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, env: DistEnv, **kwargs: Any) -> nn.Module:
    """DistributedDataParallel around ``model`` (already on ``env.device``) in a world of several."""
    if not env.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                                   **kwargs)


def all_ranks_max(flag: bool, env: DistEnv) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if not env.distributed:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=env.control)
    return bool(value.item())


def all_ranks_all(flag: bool, env: DistEnv) -> bool:
    """True on every rank only when ``flag`` is true on every rank (e.g. "each rank has a batch")."""
    return not all_ranks_max(not flag, env)


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj, group=env.control)
    return out


def reduce_mean(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean over ranks (gloo has no AVG: sum, then divide), returned on the CPU."""
    if env.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= env.world_size
    return values.cpu()


# ------------------------------------------------------------------ cross-rank gathers (objectives)
# Contrastive objectives need the other ranks' embeddings as negatives (STiCA, SvaCLR) and the
# memory-bank objectives need every rank's (embedding, instance index) to update the bank (AVID).
# The default process group carries them: NCCL on GPUs, gloo on CPUs.
def all_gather_cat(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Every rank's ``x`` concatenated along dim 0 in rank order, without gradient (same shape on
    every rank). A world of one returns ``x`` itself."""
    if not env.distributed:
        return x
    parts = [torch.empty_like(x) for _ in range(env.world_size)]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns to each rank the summed gradient of its own slice, so
    that a loss over gathered keys trains the keys' owners (DDP then averages over ranks)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # every rank's loss may use this rank's rows
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None, None


def gather_keys(x: torch.Tensor, env: DistEnv, *, detach: bool) -> tuple[torch.Tensor, int]:
    """(every rank's ``x`` in rank order, the offset of this rank's rows in it).

    ``detach=True`` is GDT's ``dist_collect_other`` convention (keys are constants); with
    ``detach=False`` gradients reach the keys on every rank, so that N ranks of B give the same
    averaged gradients as one process of N*B."""
    if not env.distributed:
        return (x.detach() if detach else x), 0
    offset = env.rank * x.shape[0]
    if detach:
        return all_gather_cat(x, env), offset
    return _GatherWithGrad.apply(x, env.rank, env.world_size), offset
