"""The model zoo. Every model is an ``nn.Sequential`` of blocks, so a split
point is simply an index between two blocks.

Each model comes with its task (dataset, loss, whether accuracy means
anything) and each block reports its parameters and a FLOP estimate.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from playground.spec.partition import balance_split_points

# --------------------------------------------------------------------------
# Blocks


class LinearBlock(nn.Sequential):
    """Linear layer, optionally followed by ReLU: one block of an MLP."""

    def __init__(self, d_in: int, d_out: int, relu: bool = True):
        linear = nn.Linear(d_in, d_out)
        if relu:  # He initialisation keeps the signal alive through a deep ReLU stack
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            nn.init.zeros_(linear.bias)
        layers: list[nn.Module] = [linear]
        if relu:
            layers.append(nn.ReLU())
        super().__init__(*layers)


class Embedding(nn.Module):
    """Token embedding plus learned position embedding."""

    def __init__(self, vocab: int, d_model: int, context: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        return self.tok(idx) + self.pos(torch.arange(t, device=idx.device))


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate q, k, v projections.

    The head count is read from the projection's output width, so the same
    code runs on a tensor-parallel shard holding heads/tp heads.
    """

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.head_dim = d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, -1, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, -1))

    def attention_flops(self, t: int, d_model: int) -> int:
        """QK^T and AV: t * t * d multiply-adds each, so 4 * t * t * d FLOPs per sample (a multiply-add counts 2)."""
        return 4 * t * t * d_model


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class LMHead(nn.Module):
    """Final layer norm and projection to the vocabulary."""

    def __init__(self, d_model: int, vocab: int):
        super().__init__()
        self.ln = nn.LayerNorm(d_model)
        self.proj = nn.Linear(d_model, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.ln(x))


# --------------------------------------------------------------------------
# The zoo


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    build: Callable[[], nn.Sequential]
    block_labels: tuple[str, ...]
    task: str  # "regression" (MSE) or "classification" (cross-entropy)
    sample_shape: tuple[int, ...]
    sample_dtype: torch.dtype = torch.float32

    @property
    def num_blocks(self) -> int:
        return len(self.block_labels)


SEED_IN, SEED_HIDDEN, SEED_OUT = 8, 16, 4
MLP_IN, MLP_WIDTH, MLP_HIDDEN_BLOCKS, CLASSES = 64, 128, 8, 10
LM_CONTEXT, LM_WIDTH, LM_HEADS, LM_LAYERS = 32, 64, 4, 4


def _seed_mlp() -> nn.Sequential:
    # The source text's two-layer example: h = W1 x + b1, y = W2 h + b2.
    return nn.Sequential(nn.Linear(SEED_IN, SEED_HIDDEN), nn.Linear(SEED_HIDDEN, SEED_OUT))


def _mlp() -> nn.Sequential:
    blocks = [LinearBlock(MLP_IN, MLP_WIDTH)]
    blocks += [LinearBlock(MLP_WIDTH, MLP_WIDTH) for _ in range(MLP_HIDDEN_BLOCKS)]
    blocks.append(LinearBlock(MLP_WIDTH, CLASSES, relu=False))
    return nn.Sequential(*blocks)


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU()),
        nn.Linear(64, CLASSES),
    )


def _transformer() -> nn.Sequential:
    from playground.zoo.corpus import corpus_vocab_size

    vocab = corpus_vocab_size()
    return nn.Sequential(
        Embedding(vocab, LM_WIDTH, LM_CONTEXT),
        *[TransformerBlock(LM_WIDTH, LM_HEADS) for _ in range(LM_LAYERS)],
        LMHead(LM_WIDTH, vocab),
    )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("seed-mlp", "two linear layers, h = W1 x + b1, y = W2 h + b2 (regression)",
                  _seed_mlp, ("h = W1 x + b1", "y = W2 h + b2"), "regression", (SEED_IN,)),
        ModelSpec("mlp", f"{MLP_HIDDEN_BLOCKS + 2}-block MLP on 8x8 digits images",
                  _mlp, ("in", *[f"hidden {i + 1}" for i in range(MLP_HIDDEN_BLOCKS)], "out"),
                  "classification", (MLP_IN,)),
        ModelSpec("cnn", "small CNN on 8x8 digits images",
                  _cnn, ("conv 16", "conv 32 + pool", "conv 32", "fc 64", "out"),
                  "classification", (1, 8, 8)),
        ModelSpec("transformer", f"{LM_LAYERS}-layer character language model",
                  _transformer, ("embed", *[f"layer {i + 1}" for i in range(LM_LAYERS)], "head"),
                  "classification", (LM_CONTEXT,), torch.long),
    )
}
MODEL_NAMES = tuple(MODELS)


def model_num_blocks(name: str) -> int:
    return MODELS[name].num_blocks


def build_model(name: str, seed: int = 0) -> nn.Sequential:
    """The named model with weights drawn from ``seed``."""
    if name not in MODELS:
        raise ValueError(f"model={name!r}: must be one of {', '.join(MODEL_NAMES)}")
    with GLOBAL_RNG, torch.random.fork_rng():
        torch.manual_seed(seed)
        return MODELS[name].build()


GLOBAL_RNG = threading.RLock()
"""Held by whatever seeds or draws from torch's process-wide generator in
the caller (building a model, probing its random blocks, the single-device
baseline): two runs started from two threads would otherwise reseed each
other's draws."""


# --------------------------------------------------------------------------
# Per-block facts


@dataclass(frozen=True)
class BlockInfo:
    index: int
    label: str
    params: int
    flops: int
    """Forward FLOPs per sample (a multiply-add counts 2); training ~ 3x."""
    activation_shape: tuple[int, ...]
    """Shape of the block's output for one sample."""


def block_infos(model: nn.Sequential, sample: torch.Tensor, labels: tuple[str, ...] | None = None) -> list[BlockInfo]:
    """Parameters and forward FLOPs of each block, found by running one
    sample through the model with hooks on the layers that do the work:
    Linear 2*in*out per output row, Conv2d 2*k*k*C_in/groups per output
    element, attention 4*t*t*d."""
    flops = [0] * len(model)
    shapes: list[tuple[int, ...]] = []
    current = [0]

    def count(module: nn.Module, inputs, output) -> None:
        n = 0
        if isinstance(module, nn.Linear):
            n = 2 * module.in_features * output.numel()
        elif isinstance(module, nn.Conv2d):
            k = math.prod(module.kernel_size) * module.in_channels // module.groups
            n = 2 * k * output.numel()
        elif isinstance(module, CausalSelfAttention):
            _, t, d = inputs[0].shape
            n = module.attention_flops(t, d)
        flops[current[0]] += n

    handles = [m.register_forward_hook(count) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, CausalSelfAttention))]
    try:
        with torch.no_grad():
            x = sample.unsqueeze(0)
            for i, block in enumerate(model):
                current[0] = i
                x = block(x)
                shapes.append(tuple(x.shape[1:]))
    finally:
        for h in handles:
            h.remove()
    labels = labels or tuple(f"block {i}" for i in range(len(model)))
    return [
        BlockInfo(i, labels[i], sum(p.numel() for p in block.parameters()), flops[i], shapes[i])
        for i, block in enumerate(model)
    ]


def model_block_infos(name: str) -> list[BlockInfo]:
    """The zoo model's blocks (parameters, FLOPs, shapes): profiled once per
    model name, as they depend on nothing else."""
    spec = MODELS[name]
    sample = torch.zeros(spec.sample_shape, dtype=spec.sample_dtype)
    return list(remember_zoo_block_infos(name, lambda: block_infos(build_model(name), sample, spec.block_labels)))


_ZOO_BLOCK_INFOS: dict[str, tuple[BlockInfo, ...]] = {}


def remember_zoo_block_infos(name: str, profile: Callable[[], list[BlockInfo]]) -> tuple[BlockInfo, ...]:
    """The zoo model ``name``'s block profile, taken by ``profile()`` the
    first time it is asked for in this process."""
    if name not in _ZOO_BLOCK_INFOS:
        _ZOO_BLOCK_INFOS[name] = tuple(profile())
    return _ZOO_BLOCK_INFOS[name]


def propose_split_points(model: str | nn.Sequential, stages: int, sample: torch.Tensor | None = None) -> tuple[int, ...]:
    """Split points that balance the stages' estimated forward FLOPs (a
    model name, or a Sequential with one input ``sample``)."""
    infos = model_block_infos(model) if isinstance(model, str) else block_infos(model, sample)
    return balance_split_points([max(1, b.flops) for b in infos], stages)
