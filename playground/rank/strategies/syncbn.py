"""BatchNorm over the whole batch of a data-parallel group (``sync_batchnorm``).

On GPUs: torch's ``nn.SyncBatchNorm.convert_sync_batchnorm``. torch's
SyncBatchNorm refuses CPU tensors (its ``batch_norm_stats`` kernel exists
for GPUs only), so on CPU ``CpuSyncBatchNorm`` computes the same statistics
with differentiable all-reduces (``torch.distributed.nn.functional``):

  n = sum_r n_r,  mean = (sum_r sum_i x_ri) / n,
  var = (sum_r sum_i (x_ri - mean)^2) / n,
  y = (x - mean) / sqrt(var + eps) * weight + bias.

Forward: all-reduce (sum) of the per-rank sums; backward: all-reduce (sum)
of their gradients, so each rank's input gradient is the one a single
device computes for the whole batch. The running statistics are updated
as BatchNorm does, with the unbiased variance var * n / (n - 1).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce

from playground.instrument import BatchNormBase

# torch deprecates this all_reduce, but its suggested successor,
# _functional_collectives.all_reduce, has no backward; this one's backward is
# the all-reduce of the gradients the math needs. training.train_rank
# silences the warning (instrument.quiet_known_warnings).


class CpuSyncBatchNorm(BatchNormBase):
    """A BatchNorm whose training-mode statistics span ``process_group``."""

    def __init__(self, bn: BatchNormBase, process_group):
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                         device=bn.weight.device if bn.affine else None)
        # The same Parameters and buffers: the optimizer and state dict see no change.
        if bn.affine:
            self.weight, self.bias = bn.weight, bn.bias
        if bn.track_running_stats:
            self.running_mean, self.running_var = bn.running_mean, bn.running_var
            self.num_batches_tracked = bn.num_batches_tracked
        self.training = bn.training
        self.process_group = process_group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.track_running_stats:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        local = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype)
        n = all_reduce(local, group=self.process_group)
        mean = all_reduce(x.sum(dims), group=self.process_group) / n
        centred = x - mean.reshape(shape)
        var = all_reduce((centred * centred).sum(dims), group=self.process_group) / n
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n / (n - 1))
        y = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked += 1
        # momentum None: a cumulative average, as in nn.BatchNorm.
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - m).add_(mean, alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased_var, alpha=m)


def convert_sync_batchnorm(model: nn.Module, group, device_type: str) -> nn.Module:
    """``model`` with every BatchNorm normalising over ``group``'s ranks."""
    if device_type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
    if dist.get_world_size(group) == 1:
        return model
    for name, child in model.named_children():
        if isinstance(child, BatchNormBase):
            setattr(model, name, CpuSyncBatchNorm(child, group))
        else:
            convert_sync_batchnorm(child, group, device_type)
    return model
