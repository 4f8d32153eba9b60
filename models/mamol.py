"""MaMOL: Missing-aware Mixture of LoRAs (Gao et al., "Rethinking Efficient
Mixture-of-Experts for Remote Sensing Modality-Missing Classification").

Per-modality projection of the patch into tokens, the (frozen) backbone, and
in the FFN of some blocks (by default the last 6) a mixture of LoRA experts
beside the frozen FFN::

    z      = ln_2(x)                                   the FFN input
    h      = LayerNorm(FFN_frozen(z) + h_dyn + h_stat)
    h_dyn  = sum_k g_k B_k A_k z,  g = topk(softmax(W_t f_t([z; m_type])))
    h_stat = sum_j s_j B_j A_j z
    x      = x + h

Dynamic experts are routed per token by the pattern-aware router
(``models.lora.PatternRouter``). ``m_type`` encodes the missing pattern: the
paper recasts modality missing as multi-task learning with one task per
missing pattern and routes on the task, so ``m_type`` is a learnable
embedding of the pattern (code ``sum_i 2**i`` over the available
modalities, one row per pattern), shared by all expert layers. A learnable
embedding per pattern, rather than a linear map of the availability bits,
lets patterns get unrelated codes, as unrelated tasks would.

Static experts are not routed: ``num_shared_experts`` shared experts always
on with coefficient 1, and one expert per modality with coefficient
``1 / (number of present modalities)`` when that modality is present, 0 when
it is missing. The coefficients are fixed, never learned.

The classification head sees the modality features concatenated (see
``models.classifier``). On the dense path (``models.dense``) availability is
per pixel: ``m_type`` and the static coefficients are taken per token from
the token's own pixel pattern. The seed describes no auxiliary loss (no router
load-balancing term), so training minimises cross-entropy only.

``config.params`` (with the common keys of ``models.classifier``):
    expert_layers: ``"last"`` (default) or ``"head"``: put the mixtures in the last or the first blocks.
    num_expert_layers: how many blocks get a mixture (default 6; at most the backbone depth).
    lora_rank: rank of every expert (default 8).
    lora_alpha: LoRA scaling numerator (default: the rank, scale 1).
    num_dynamic_experts: routed experts per layer (default 2).
    top_k: routed experts kept per token (default 1).
    num_shared_experts: always-on static experts per layer (default 1).
    type_dim: width of ``m_type`` (default 32).
    router_hidden: width of the router's ``f_t`` (default 64).
    use_dynamic / use_static / use_modality_experts: the paper's ablations (default True).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
from open_clip.transformer import LayerNorm, ResidualAttentionBlock
from torch import Tensor, nn

from models.backbone import attention_step, ffn_input
from models.base import ModelConfig, OptimizerDefaults
from models.classifier import COMMON_PARAMS, PatchTransformerClassifier
from models.dense import Canvas
from models.lora import LoRAExperts, PatternRouter, mix_experts
from models.patterns import pattern_code
from models.registry import register

log = logging.getLogger(__name__)

MAMOL_PARAMS: dict[str, Any] = {
    **COMMON_PARAMS,
    "expert_layers": "last",
    "num_expert_layers": 6,
    "lora_rank": 8,
    "lora_alpha": None,
    "num_dynamic_experts": 2,
    "top_k": 1,
    "num_shared_experts": 1,
    "type_dim": 32,
    "router_hidden": 64,
    "use_dynamic": True,
    "use_static": True,
    "use_modality_experts": True,
}


class BlockContext(NamedTuple):
    """Per forward pass: the availability and the pattern codes ``m_type`` or None.

    Patch path: (B, M) and (B, type_dim), per sample. Dense path: (N, L, M) and (N, L, type_dim), per token.
    """

    available: Tensor
    m_type: Tensor | None


class MissingAwareMixture(nn.Module):
    """The LoRA mixture of one block's FFN: dynamic experts, static experts and the output LayerNorm."""

    def __init__(self, width: int, num_modalities: int, p: dict[str, Any]) -> None:
        super().__init__()
        rank, alpha = int(p["lora_rank"]), p["lora_alpha"]
        self.router: PatternRouter | None = None
        self.dynamic: LoRAExperts | None = None
        if p["use_dynamic"]:
            experts = int(p["num_dynamic_experts"])
            self.router = PatternRouter(width, int(p["type_dim"]), experts, int(p["top_k"]), int(p["router_hidden"]))
            self.dynamic = LoRAExperts(width, experts, rank, alpha)
        self.num_shared = int(p["num_shared_experts"]) if p["use_static"] else 0
        self.modality_experts = bool(p["use_static"] and p["use_modality_experts"])
        static_count = self.num_shared + (num_modalities if self.modality_experts else 0)
        self.static = LoRAExperts(width, static_count, rank, alpha) if static_count else None
        self.norm = LayerNorm(width)

    def forward(
        self, z: Tensor, h_frozen: Tensor, m_type: Tensor | None, available: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """``LayerNorm(h_frozen + h_dyn + h_stat)`` and the dynamic gates (B, L, E) or None."""
        gates = None
        groups = []
        if self.router is not None and self.dynamic is not None and m_type is not None:
            gates = self.router(z, m_type)
            groups.append((self.dynamic, gates))
        if self.static is not None:
            coefficients = self.static_coefficients(available)
            groups.append((self.static, coefficients.unsqueeze(1) if coefficients.dim() == 2 else coefficients))
        h = h_frozen + mix_experts(z, groups) if groups else h_frozen
        return self.norm(h), gates

    def static_coefficients(self, available: Tensor) -> Tensor:
        """(..., E_static) for availability (..., M): 1 for shared experts; 1/(present count) for each present modality's expert."""
        shared = available.new_ones((*available.shape[:-1], self.num_shared), dtype=torch.float32)
        if not self.modality_experts:
            return shared
        present = available.float()
        per_modality = present / present.sum(dim=-1, keepdim=True).clamp(min=1.0)
        return torch.cat([shared, per_modality], dim=-1)


@register("mamol")
class MaMOL(PatchTransformerClassifier):
    """Missing-aware Mixture of LoRAs on the open_clip backbone (see the module docstring)."""

    default_params = MAMOL_PARAMS
    supports_dense = True
    # auto trains densely: with 2 px windows, the 5 x 5 local convolution and 30 epochs the dense path is within
    # 1 point of the patch path or ahead on the mamol-table1 rows measured over 3 seeds (docs/accuracy.md)
    dense_by_default = True
    # on the dense path 1e-3: 2e-3 left whole LiDAR-only orchards flipping between apple trees and vineyard from seed
    # to seed (Trento spreads of 3-5 points); measured in docs/accuracy.md
    optimizer_defaults = OptimizerDefaults(dense_lr=1e-3)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        p = self.params
        depth = self.backbone.layers
        count = int(p["num_expert_layers"])
        if count < 1:
            raise ValueError(f"num_expert_layers must be >= 1, got {count}")
        if count > depth:
            log.info("num_expert_layers=%d > backbone depth %d: experts in all %d blocks", count, depth, depth)
            count = depth
        if p["expert_layers"] == "last":
            self.expert_layers = list(range(depth - count, depth))
        elif p["expert_layers"] == "head":
            self.expert_layers = list(range(count))
        else:
            raise ValueError(f"expert_layers must be 'last' or 'head', got {p['expert_layers']!r}")
        width, num_modalities = self.backbone.width, len(config.modalities)
        self.pattern_embedding = nn.Embedding(2**num_modalities, int(p["type_dim"])) if p["use_dynamic"] else None
        self.mixtures = nn.ModuleDict(
            {str(i): MissingAwareMixture(width, num_modalities, p) for i in self.expert_layers}
        )
        self.last_gates: dict[int, Tensor] = {}

    def pattern_codes(self, available: Tensor) -> Tensor:
        """Integer code of each availability pattern (..., M) -> (...): sum of 2**i over available modalities."""
        return pattern_code(available, axis=-1)

    def forward(self, inputs: dict[str, Tensor], available: Tensor) -> Tensor:
        self.last_gates = {}
        return super().forward(inputs, available)

    def dense_token_features(self, tokens: Tensor, available: Tensor, canvas: Canvas, margin: int) -> Tensor:
        self.last_gates = {}
        return super().dense_token_features(tokens, available, canvas, margin)

    def block_context(self, available: Tensor) -> BlockContext:
        m_type = None if self.pattern_embedding is None else self.pattern_embedding(self.pattern_codes(available))
        return BlockContext(available, m_type)

    def run_block(self, index: int, block: ResidualAttentionBlock, x: Tensor, context: BlockContext) -> Tensor:
        if index not in self.expert_layers:
            return block(x)
        x = attention_step(block, x)
        z = ffn_input(block, x)
        h, gates = self.mixtures[str(index)](z, block.mlp(z), context.m_type, context.available)
        if gates is not None:
            self.last_gates[index] = gates.detach()
        return x + block.ls_2(h)

    def gates(self, inputs: dict[str, Tensor], available: Tensor) -> dict[int, Tensor]:
        """Dynamic gates (B, L, E) per expert layer for one forward pass (empty without dynamic experts)."""
        with torch.no_grad():
            self(inputs, available)
        return dict(self.last_gates)
