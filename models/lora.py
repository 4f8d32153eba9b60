"""LoRA experts and the pattern-aware router that mixes them.

An expert is a low-rank map ``z -> scale * B A z`` (width -> rank -> width)
beside a frozen FFN. ``LoRAExperts`` holds E experts as two stacked matrices
and applies a coefficient per expert (per sample or per token) in one pair of
matrix products, so the cost does not grow with Python loops.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LoRAExperts(nn.Module):
    """E LoRA experts of one rank: ``out = sum_e c_e * scale * B_e A_e z``.

    ``B`` starts at zero (as in LoRA), so a fresh mixture adds nothing to the
    frozen FFN; ``scale = alpha / rank``.

    Args:
        width: input and output width.
        num_experts: E.
        rank: r, the inner width of each expert.
        alpha: LoRA scaling numerator; defaults to ``rank`` (scale 1).
    """

    def __init__(self, width: int, num_experts: int, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        if num_experts < 1 or rank < 1:
            raise ValueError(f"need at least one expert of rank >= 1, got {num_experts} experts of rank {rank}")
        self.num_experts = num_experts
        self.rank = rank
        self.scale = (rank if alpha is None else alpha) / rank
        self.down = nn.Parameter(torch.empty(num_experts * rank, width))  # stacked A_e
        self.up = nn.Parameter(torch.zeros(num_experts * rank, width))  # stacked B_e^T
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))

    def forward(self, z: Tensor, coefficients: Tensor) -> Tensor:
        """Mix the experts.

        Args:
            z: (B, L, width) tokens.
            coefficients: (B, L, E) per token or (B, 1, E) per sample.
        """
        b, length, _ = z.shape
        inner = (z @ self.down.to(z.dtype).t()).view(b, length, self.num_experts, self.rank)
        inner = inner * coefficients.to(inner.dtype).unsqueeze(-1)
        return self.scale * (inner.reshape(b, length, -1) @ self.up.to(inner.dtype))


def mix_experts(z: Tensor, groups: list[tuple[LoRAExperts, Tensor]]) -> Tensor:
    """``sum`` over groups of ``experts(z, coefficients)`` in one pair of matrix products.

    The experts of every group are stacked (their scales folded into the up
    matrices), so a layer with dynamic and static experts pays two products,
    not four. Coefficients as in :meth:`LoRAExperts.forward`.
    """
    if len(groups) == 1:
        experts, coefficients = groups[0]
        return experts(z, coefficients)
    b, length, _ = z.shape
    down = torch.cat([e.down for e, _ in groups]).to(z.dtype)
    up = torch.cat([e.scale * e.up for e, _ in groups]).to(z.dtype)
    inner = z @ down.t()
    weights = torch.cat(
        [c.to(z.dtype).expand(b, length, e.num_experts).repeat_interleave(e.rank, dim=-1) for e, c in groups], dim=-1
    )
    return (inner * weights) @ up


class PatternRouter(nn.Module):
    """Dynamic router ``g = softmax(W_t f_t([z; m_type]))``, kept to the top-k experts.

    ``f_t`` is a linear layer with GELU on the concatenation of the token
    ``z`` and the missing-pattern code ``m_type``; it is computed as
    ``W_z z + W_m m_type`` (the same linear map, without materialising the
    concatenation for every token). Top-k keeps the k largest probabilities
    and zeroes the others without renormalising (as in Switch Transformers),
    so the router still receives a gradient when k = 1.

    Args:
        width: token width.
        type_dim: width of ``m_type``.
        num_experts: number of dynamic experts.
        top_k: experts kept per token.
        hidden: width of ``f_t``.
    """

    def __init__(self, width: int, type_dim: int, num_experts: int, top_k: int, hidden: int) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in 1..{num_experts} (the number of dynamic experts), got {top_k}")
        self.top_k = top_k
        self.num_experts = num_experts
        self.token_map = nn.Linear(width, hidden)
        self.type_map = nn.Linear(type_dim, hidden, bias=False)
        self.act = nn.GELU()
        self.gate = nn.Linear(hidden, num_experts)

    def forward(self, z: Tensor, m_type: Tensor) -> Tensor:
        """Gates (B, L, E) for tokens ``z`` (B, L, width) and pattern codes ``m_type`` (B, type_dim) or per token (B, L, type_dim)."""
        typed = self.type_map(m_type.to(z.dtype))
        hidden = self.token_map(z) + (typed.unsqueeze(1) if typed.dim() == 2 else typed)
        probs = torch.softmax(self.gate(self.act(hidden)).float(), dim=-1)
        if self.top_k < self.num_experts:
            kept = torch.topk(probs, self.top_k, dim=-1).indices
            mask = torch.zeros_like(probs).scatter_(-1, kept, 1.0)
            probs = probs * mask
        return probs
