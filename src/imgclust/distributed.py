"""Distributed helpers that degrade to one process.

Every function works whether or not ``torch.distributed`` is initialised: with one process,
:func:`world_size` is 1, :func:`all_gather` returns its input and :func:`all_reduce_sum` is the identity.
So the same training code runs under ``torchrun --nproc_per_node N`` (PyTorch DDP) and as a plain
``python`` process (as ``lightly/utils/dist.py``).

Nothing here says ``.cuda()``: collectives run on whatever device the tensors live on (gloo on CPU,
NCCL on GPU).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "local_rank",
    "is_main_process",
    "barrier",
    "all_gather",
    "all_reduce_sum",
    "differentiable_all_reduce_sum",
    "differentiable_all_gather",
    "broadcast_object",
    "init_from_env",
    "GlobalBatchNorm",
    "convert_sync_batchnorm",
]


def is_distributed() -> bool:
    """True when a process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """Rank on this machine, from ``LOCAL_RANK`` as set by ``torchrun`` (0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group from ``torchrun``'s environment, if present.

    Args:
        backend: ``"gloo"``, ``"nccl"``…; default NCCL when CUDA is available, else gloo.

    Returns:
        True when this call (or an earlier one) left a process group initialised.
    """
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    return True


@torch.no_grad()
def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0, in rank order (no gradient).

    Sizes along dim 0 may differ between processes (the last batch of an epoch); the other dims must
    agree.

    Args:
        tensor: (n_r, ...) on this process.

    Returns:
        (sum_r n_r, ...), identical on every process. With one process, ``tensor`` itself.
    """
    if not is_distributed():
        return tensor
    n = world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(n)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, pad], dim=0)
    else:
        padded = tensor.contiguous()
    gathered = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:c] for g, c in zip(gathered, counts)], dim=0)


@torch.no_grad()
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over processes (returned as a new tensor; the input is not modified)."""
    if not is_distributed():
        return tensor.clone()
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


class _AllReduceSum(torch.autograd.Function):
    """y = sum_r x_r on every process; the gradient of x_r is sum_r dL/dy_r (all-reduced too)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad_output.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def differentiable_all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """All-reduce (sum) that lets gradients flow back to every process's input."""
    if not is_distributed():
        return tensor
    return _AllReduceSum.apply(tensor)


class _AllGather(torch.autograd.Function):
    """y = cat_r x_r on every process; the gradient of x_r is its rows of sum_r dL_r/dy (all-reduced)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        gathered = all_gather(tensor)
        sizes = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
        everyone = [torch.zeros_like(sizes) for _ in range(world_size())]
        dist.all_gather(everyone, sizes)
        ctx.offset = int(sum(int(c.item()) for c in everyone[:rank()]))
        ctx.rows = tensor.shape[0]
        return gathered

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad_output.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.offset:ctx.offset + ctx.rows]


def differentiable_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Rows of every process in rank order, with gradients flowing back to each process's own rows.

    For a loss that every process computes identically on the gathered rows (e.g. a batch-level MMD), the
    all-reduced backward and DDP's gradient averaging together give exactly the one-process gradient.
    """
    if not is_distributed():
        return tensor
    return _AllGather.apply(tensor)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from ``src`` to every process (identity with one process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose statistics are computed over the global batch of all processes, on any device.

    ``torch.nn.SyncBatchNorm`` only runs on accelerators; this does the same on CPU (gloo) with two
    differentiable all-reduces (sum and sum of squares), so a multi-process CPU run computes exactly what
    one process computes on the whole batch. It accepts (N, C) and (N, C, *) inputs. With one process,
    or in eval mode, it is a plain batch norm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not (self.training and is_distributed()):
            return super().forward(input)
        channels = input.shape[1]
        dims = [0] + list(range(2, input.dim()))
        x = input.float()
        count = torch.tensor([float(x.numel() // channels)], device=x.device)
        stats = torch.cat([x.sum(dim=dims), (x * x).sum(dim=dims), count])
        stats = differentiable_all_reduce_sum(stats)
        total = stats[-1]
        mean = stats[:channels] / total
        var = stats[channels : 2 * channels] / total - mean * mean
        shape = [1, channels] + [1] * (input.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
                if self.momentum is None:
                    factor = 1.0 / float(self.num_batches_tracked.item())  # type: ignore[union-attr]
                else:
                    factor = self.momentum
                unbiased = var * total / torch.clamp(total - 1, min=1.0)
                self.running_mean.mul_(1 - factor).add_(factor * mean.detach())
                self.running_var.mul_(1 - factor).add_(factor * unbiased.detach())
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device | str) -> nn.Module:
    """Make every batch norm in ``module`` use global-batch statistics.

    On CUDA this is ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``; elsewhere every ``_BatchNorm`` is
    replaced by a :class:`GlobalBatchNorm` carrying the same parameters and buffers. A no-op when not
    distributed.
    """
    if not is_distributed():
        return module
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_global_bn(module)


def _convert_global_bn(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            with torch.no_grad():
                new.weight = module.weight
                new.bias = module.bias
        if module.track_running_stats:
            new.running_mean = module.running_mean
            new.running_var = module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert_global_bn(child))
    return module
