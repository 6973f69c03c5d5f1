"""Architecture presets: published models' shapes, built as an
``nn.Sequential`` of blocks like the zoo's models (embedding, one block per
layer, head), so that every strategy applies to them as it does to the zoo.

The planner builds them under ``FakeTensorMode``: shapes and dtypes only,
no weights, nothing allocated at full size. They are never trained here.

Sources of the shapes:

  gpt2, gpt2-xl      Radford et al. 2019, "Language Models are Unsupervised
                     Multitask Learners", table 2 (12 and 48 layers, d 768 and
                     1600), and the released checkpoints' configuration
                     (vocab 50257, context 1024, heads 12 and 25, dropout 0.1,
                     the output head tied to the token embedding).
  llama3-8b,         Dubey et al. 2024, "The Llama 3 Herd of Models", table 3
  llama3-70b         (layers 32 / 80, d 4096 / 8192, FFN 14336 / 28672,
                     heads 32 / 64, 8 key-value heads, vocab 128256, RoPE
                     base 500000), context 8192; no biases, RMSNorm, SwiGLU,
                     an output head of its own (not tied).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Preset:
    """The published shape of one model."""

    name: str
    family: str
    """"gpt2" (LayerNorm, GELU MLP, learned positions, tied head) or
    "llama3" (RMSNorm, SwiGLU, rotary positions, grouped-query attention)."""
    layers: int
    d_model: int
    heads: int
    kv_heads: int
    ffn: int
    """Width of the MLP's hidden layer."""
    vocab: int
    context: int
    """Tokens per sample the model was trained on (the default sequence length)."""
    published_params: int
    """Parameters of the released checkpoint (its configuration's count;
    the papers round them: 124M and 1.5B, 8B and 70B), for comparison."""
    source: str
    dropout: float = 0.0
    rope_base: float = 500_000.0

    @property
    def num_blocks(self) -> int:
        """Embedding, one block per layer, head."""
        return self.layers + 2

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("gpt2", "gpt2", layers=12, d_model=768, heads=12, kv_heads=12, ffn=4 * 768, vocab=50257,
           context=1024, published_params=124_439_808, dropout=0.1,
           source="Radford et al. 2019, table 2; the released GPT-2 small configuration"),
    Preset("gpt2-xl", "gpt2", layers=48, d_model=1600, heads=25, kv_heads=25, ffn=4 * 1600, vocab=50257,
           context=1024, published_params=1_557_611_200, dropout=0.1,
           source="Radford et al. 2019, table 2; the released GPT-2 XL configuration"),
    Preset("llama3-8b", "llama3", layers=32, d_model=4096, heads=32, kv_heads=8, ffn=14336, vocab=128256,
           context=8192, published_params=8_030_261_248,
           source="Dubey et al. 2024, The Llama 3 Herd of Models, table 3"),
    Preset("llama3-70b", "llama3", layers=80, d_model=8192, heads=64, kv_heads=8, ffn=28672, vocab=128256,
           context=8192, published_params=70_553_706_496,
           source="Dubey et al. 2024, The Llama 3 Herd of Models, table 3"),
)}


# --------------------------------------------------------------------------
# GPT-2 blocks


class GPT2Embedding(nn.Module):
    """Token plus learned position embedding, then dropout."""

    def __init__(self, p: Preset):
        super().__init__()
        self.tok = nn.Embedding(p.vocab, p.d_model)
        self.pos = nn.Embedding(p.context, p.d_model)
        self.drop = nn.Dropout(p.dropout)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.drop(self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device)))


class GPT2Block(nn.Module):
    """Pre-norm block: x + drop(out(attn(ln1 x))), then x + drop(fc2(gelu(fc1(ln2 x)))).
    q, k, v are three Linear layers (GPT-2's fused c_attn has the same
    parameters), so that tensor parallelism can cut each by heads."""

    def __init__(self, p: Preset):
        super().__init__()
        self.heads, self.head_dim, self.dropout = p.heads, p.head_dim, p.dropout
        self.ln1 = nn.LayerNorm(p.d_model)
        self.q, self.k, self.v = (nn.Linear(p.d_model, p.d_model) for _ in range(3))
        self.out = nn.Linear(p.d_model, p.d_model)
        self.ln2 = nn.LayerNorm(p.d_model)
        self.fc1 = nn.Linear(p.d_model, p.ffn)
        self.fc2 = nn.Linear(p.ffn, p.d_model)
        self.drop = nn.Dropout(p.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.ln1(x)
        # -1: the heads this rank holds (all, or heads / tp under tensor parallelism).
        q, k, v = (proj(h).view(b, t, -1, self.head_dim).transpose(1, 2) for proj in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        x = x + self.drop(self.out(y.transpose(1, 2).reshape(b, t, -1)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh")))

    def tensor_parallel_styles(self, tp: int) -> dict[str, str] | str:
        """Megatron-LM's plan (Shoeybi et al. 2019): q, k, v and fc1
        column-wise, out and fc2 row-wise; or why not."""
        if self.heads % tp or self.fc1.out_features % tp:
            return f"{self.heads} heads or {self.fc1.out_features} fc1 features do not divide among {tp} ranks"
        return {"q": "colwise", "k": "colwise", "v": "colwise", "out": "rowwise", "fc1": "colwise", "fc2": "rowwise"}


class GPT2Head(nn.Module):
    """Final LayerNorm and the projection to the vocabulary, its weight the
    token embedding's (tied)."""

    def __init__(self, p: Preset, embedding: GPT2Embedding):
        super().__init__()
        self.ln = nn.LayerNorm(p.d_model)
        self.proj = nn.Linear(p.d_model, p.vocab, bias=False)
        self.proj.weight = embedding.tok.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.ln(x))


# --------------------------------------------------------------------------
# Llama 3 blocks


def rotate(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021), rotate-half form: for
    position t and pair i of the head's dims, angle t * base^(-2i/d).
    x: (batch, heads, tokens, head_dim)."""
    t, d = x.shape[-2], x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = torch.outer(torch.arange(t, device=x.device, dtype=torch.float32), inv)
    cos, sin = (torch.cat([f(angles)] * 2, dim=-1).to(x.dtype) for f in (torch.cos, torch.sin))
    half = torch.cat([-x[..., d // 2:], x[..., : d // 2]], dim=-1)
    return x * cos + half * sin


class LlamaBlock(nn.Module):
    """x + wo(attn(rope(wq h), rope(wk h), wv h)), h = norm1(x); then
    x + w2(silu(w1 h) * w3 h), h = norm2(x). Grouped-query attention: kv_heads
    key-value heads, each shared by heads / kv_heads query heads."""

    def __init__(self, p: Preset):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.rope_base = p.heads, p.kv_heads, p.head_dim, p.rope_base
        kv = p.kv_heads * p.head_dim
        self.norm1 = nn.RMSNorm(p.d_model, eps=1e-5)
        self.wq = nn.Linear(p.d_model, p.d_model, bias=False)
        self.wk = nn.Linear(p.d_model, kv, bias=False)
        self.wv = nn.Linear(p.d_model, kv, bias=False)
        self.wo = nn.Linear(p.d_model, p.d_model, bias=False)
        self.norm2 = nn.RMSNorm(p.d_model, eps=1e-5)
        self.w1 = nn.Linear(p.d_model, p.ffn, bias=False)
        self.w3 = nn.Linear(p.d_model, p.ffn, bias=False)
        self.w2 = nn.Linear(p.ffn, p.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.norm1(x)
        q, k, v = (proj(h).view(b, t, -1, self.head_dim).transpose(1, 2) for proj in (self.wq, self.wk, self.wv))
        q, k = rotate(q, self.rope_base), rotate(k, self.rope_base)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.wo(y.transpose(1, 2).reshape(b, t, -1))
        h = self.norm2(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))

    def tensor_parallel_styles(self, tp: int) -> dict[str, str] | str:
        """wq, wk, wv, w1, w3 column-wise; wo and w2 row-wise; or why not."""
        if self.heads % tp or self.kv_heads % tp or self.w1.out_features % tp:
            return (f"{self.heads} heads, {self.kv_heads} key-value heads or {self.w1.out_features} FFN "
                    f"features do not divide among {tp} ranks")
        return {"wq": "colwise", "wk": "colwise", "wv": "colwise", "wo": "rowwise",
                "w1": "colwise", "w3": "colwise", "w2": "rowwise"}


class LlamaHead(nn.Module):
    """Final RMSNorm and the output projection to the vocabulary."""

    def __init__(self, p: Preset):
        super().__init__()
        self.norm = nn.RMSNorm(p.d_model, eps=1e-5)
        self.proj = nn.Linear(p.d_model, p.vocab, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


def build_preset(name: str, layers: int | None = None) -> nn.Sequential:
    """The preset ``name`` as an nn.Sequential: embedding, its layers, head.
    Call under ``FakeTensorMode`` (or ``torch.device("meta")``) for its full
    size: real weights of the Llama presets take tens to hundreds of GB.
    ``layers``: fewer layers than published (to measure one layer).
    ``KeyError`` for an unknown name (``PlanConfig`` refuses it first)."""
    p = PRESETS[name]
    n = p.layers if layers is None else layers
    if p.family == "gpt2":
        embedding = GPT2Embedding(p)
        return nn.Sequential(embedding, *[GPT2Block(p) for _ in range(n)], GPT2Head(p, embedding))
    return nn.Sequential(nn.Embedding(p.vocab, p.d_model), *[LlamaBlock(p) for _ in range(n)], LlamaHead(p))


def block_labels(name: str) -> tuple[str, ...]:
    p = PRESETS[name]
    return ("embed", *[f"layer {i + 1}" for i in range(p.layers)], "head")

