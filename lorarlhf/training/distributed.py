"""Data parallelism over several GPUs or machines, through torch.distributed (as `accelerate launch` or
`torchrun` set it up): each process holds its own NF4 Hydra, takes its share of every batch, and the
gradients of the trainable adapters and heads are averaged across processes before each optimizer step.

The global batch is the user's whatever the number of processes: every process draws the same global
batch (same seed, same data order) and keeps its slice of it, so a run on N processes makes the same
updates as one process with the whole batch, up to floating-point summation order. Only rank 0 writes
files and shows progress; checkpoints hold global state, so any number of processes can resume them.
With one process every function here is a no-op.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_environment() -> None:
    """Join the process group a launcher (accelerate launch, torchrun) described in the environment."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def local_device() -> str | None:
    """This process's GPU under a launcher (cuda:LOCAL_RANK); None lets lorarlhf pick the default device."""
    if world_size() > 1 and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None


def shard(items: list, group: int = 1) -> list:
    """This process's contiguous share of a global batch; `group` consecutive items stay on one process.

    Shares differ by at most one group when the batch does not split evenly (the last batch of an epoch);
    a batch with fewer groups than processes is an error, since a process would have nothing to train on.
    """
    n = world_size()
    if n == 1:
        return items
    units = len(items) // group
    if units < n:
        raise ValueError(f"a batch of {units} groups cannot be shared by {n} processes; raise batch_size to >= {n}")
    start = rank() * units // n
    end = (rank() + 1) * units // n
    return items[start * group : end * group]


def average_gradients(params) -> None:
    """Average the gradients of `params` over all processes (the trainable adapters and heads only)."""
    n = world_size()
    if n == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= n
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def mean(value: float) -> float:
    """The mean over processes of a per-process number (a metric of its shard)."""
    if world_size() == 1:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.item() / world_size()


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's `tensor` (same shape on each) concatenated along dim 0, in rank order."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def mean_record(record: dict) -> dict:
    """A metrics record with every number averaged over processes (one collective), the step as is."""
    if world_size() == 1:
        return record
    keys = [k for k, v in record.items() if k != "step" and isinstance(v, int | float)]
    tensor = torch.tensor([float(record[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return {**record, **{k: v / world_size() for k, v in zip(keys, tensor.tolist(), strict=True)}}


def global_masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """rl_losses.masked_whiten over the masked entries of every process's batch: global mean and variance."""
    weights = mask.to(torch.float64)
    totals = torch.stack([(x.double() * weights).sum(), weights.sum()])
    dist.all_reduce(totals)
    mean_ = (totals[0] / totals[1]).to(x.dtype)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    centred = torch.where(mask, x - mean_, zero)
    spread = torch.stack([(centred.double().pow(2) * weights).sum()])
    dist.all_reduce(spread)
    var = (spread[0] / totals[1]).to(x.dtype)
    return torch.where(mask, centred * torch.rsqrt(var + eps), zero)
