"""MMP: Masked Modality Projection (Nguyen et al., "MMP: Towards Robust Multi-Modal
Learning with Masked Modality Projection").

The tokens of a missing modality are not zeros but a projection of the tokens
of the available ones, computed after the tokenizer (``models.projection``)
and before the transformer. For a missing modality i and each available j::

    agg_j'   = CA(agg_j, T_j)            the 8 aggregate tokens of j gather T_j
    T_ij     = CA(agg_i, agg_j')         i's aggregates read j's
    T_att_j  = CA(T_j, T_ij)             j's tokens re-weighted towards i
    T'_i     = MLP(concat_j T_att_j)     replaces the P*P tokens of i

``CA(q, kv) = q + MultiHeadAttention(LN(q), LN(kv))``. With three modalities
the concat has a slot per other modality; the slot of an unavailable j is
zeros, so the MLP sees one input layout for every pattern. Here every
modality has P*P tokens of the backbone width, so the seed's linear maps for
differing widths or token counts are identities and left out.

Training masks each available modality of a complete sample with p =
``mask_prob`` (at least one kept, ``models.masking.mmp_mask``) anew at every
step (samples a protocol already left incomplete are not masked again), and adds to the task
loss ``align_weight * SmoothL1(T'_i, T_i)`` over the masked modalities,
whose real tokens T_i are known. The target T_i is detached: the tokenizer
learns from the task only, and the projection learns to imitate it (without
the stop-gradient the tokenizer could lower the alignment loss by shrinking
every modality's tokens). Modalities missing in the data itself (not masked)
have no target and add nothing to the alignment loss. With ``keep_complete``
(the default, a deliberate departure from the paper, whose training data is
complete) a masked sample is trained on once more as it is, so that under a
protocol that leaves few samples complete the head still sees them
(docs/accuracy.md, "MMP keeps the complete samples it masks"). At inference the
projected tokens fill every missing modality.

``config.params`` (with the common keys of ``models.classifier``; ``missing_tokens``
does not apply, missing tokens are always projected):
    mask_prob: masking probability per modality during training (default 0.5).
    num_aggregate_tokens: learnable aggregate tokens per modality (default 8).
    projection_heads: attention heads of the cross-attentions (default: the backbone's).
    mlp_ratio: hidden width of the projection MLP over its output width (default 2).
    align_weight: weight of the SmoothL1 alignment loss (default 1.0).
    keep_complete: a complete sample the training mask drops a modality of is also trained on
        as it is, beside its masked copy (default true; see :meth:`MMP.training_loss`).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from open_clip.transformer import LayerNorm
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from models import dense
from models.base import ModelConfig
from models.classifier import COMMON_PARAMS, PatchTransformerClassifier
from models.masking import mmp_mask
from models.params import TRUE_OR_FALSE
from models.registry import register

MMP_PARAMS: dict[str, Any] = {
    **COMMON_PARAMS,
    "mask_prob": 0.5,
    "num_aggregate_tokens": 8,
    "projection_heads": None,
    "mlp_ratio": 2,
    "align_weight": 1.0,
    "keep_complete": True,
}


ROW_STABLE_BATCH = 8
"""The fewest pixels the dense projection runs at once. A pixel's T' must not depend on which other pixels share its
batch (a tile and the whole scene give the same map, bit for bit), and on CPU a matrix product of fewer than 8 rows,
and the fused attention kernels with one query, round differently by batch size; the projection runs attention on the
reference (math) kernel and pads a batch of fewer pixels with copies of its first."""


class CrossAttention(nn.Module):
    """``q + MultiHeadAttention(LN(q), LN(kv), LN(kv))``: queries gather from keys/values."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_q = LayerNorm(width)
        self.ln_kv = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, q: Tensor, kv: Tensor) -> Tensor:
        kv = self.ln_kv(kv)
        return q + self.attn(self.ln_q(q), kv, kv, need_weights=False)[0]

    def keys_values(self, kv: Tensor) -> tuple[Tensor, Tensor]:
        """The keys and values (..., width) of tokens ``kv`` (..., width): ``LN`` and the attention's key and value maps.

        Computed once per token, they serve every query that reads it (the dense path's
        overlapping neighbourhoods read each pixel's token (2 r + 1)^2 times).
        """
        width = self.attn.embed_dim
        x = self.ln_kv(kv)
        weight, bias = self.attn.in_proj_weight, self.attn.in_proj_bias
        return (nn.functional.linear(x, weight[width : 2 * width], bias[width : 2 * width]),
                nn.functional.linear(x, weight[2 * width :], bias[2 * width :]))

    def attend(self, q: Tensor, keys: Tensor, values: Tensor, ignore: Tensor | None = None) -> Tensor:
        """:meth:`forward` on keys and values of :meth:`keys_values` (B, N_kv, width); ``q`` (B or 1, N_q, width).

        ``ignore`` (B, N_kv) bool: the keys the queries do not read (each row must read one).
        """
        width, heads = self.attn.embed_dim, self.attn.num_heads
        weight, bias = self.attn.in_proj_weight, self.attn.in_proj_bias
        query = nn.functional.linear(self.ln_q(q), weight[:width], bias[:width]).expand(keys.shape[0], -1, -1)

        def split(x: Tensor) -> Tensor:  # (B, N, width) -> (B, heads, N, width / heads)
            return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

        read = None if ignore is None else ~ignore[:, None, None, :]
        out = nn.functional.scaled_dot_product_attention(split(query), split(keys), split(values), attn_mask=read)
        return q + self.attn.out_proj(out.transpose(1, 2).reshape(keys.shape[0], -1, width))


class MaskedModalityProjection(nn.Module):
    """Builds the tokens of missing modalities from the available ones (see the module docstring)."""

    def __init__(self, modalities: list[str], width: int, heads: int, num_aggregates: int, mlp_ratio: float) -> None:
        super().__init__()
        self.modalities = list(modalities)
        count = len(modalities)
        self.aggregates = nn.Parameter(width**-0.5 * torch.randn(count, num_aggregates, width))
        self.gather = nn.ModuleList([CrossAttention(width, heads) for _ in range(count)])
        # pair (i, j): i missing, j available; index i * count + j (diagonal unused, kept for a simple layout)
        self.pairs = [(i, j) for i in range(count) for j in range(count) if i != j]
        self.pair_attention = nn.ModuleDict({f"{i}_{j}": CrossAttention(width, heads) for i, j in self.pairs})
        self.token_attention = nn.ModuleDict({f"{i}_{j}": CrossAttention(width, heads) for i, j in self.pairs})
        inner = max(1, count - 1) * width
        hidden = int(round(mlp_ratio * width))
        self.mlps = nn.ModuleList(
            [nn.Sequential(LayerNorm(inner), nn.Linear(inner, hidden), nn.GELU(), nn.Linear(hidden, width)) for _ in range(count)]
        )

    def gatherer(self, j: int) -> CrossAttention:
        """The cross-attention through which modality ``j``'s aggregates gather its tokens."""
        return cast(CrossAttention, self.gather[j])

    def forward(self, tokens: list[Tensor], available: Tensor, target: int) -> Tensor:
        """T' (B, N, width) of modality ``target`` from the others' tokens ``tokens`` (M of (B, N, width)).

        Rows where an other modality is unavailable get a zero slot for it in the MLP input.
        """
        batch = available.shape[0]
        gathered = [None if j == target else self.gather[j](self.aggregates[j].to(t_j.dtype).expand(batch, -1, -1), t_j)
                    for j, t_j in enumerate(tokens)]
        return self.project(tokens, available, target, gathered)

    def project(self, tokens: list[Tensor], available: Tensor, target: int, gathered: list[Tensor | None]) -> Tensor:
        """T' of ``target`` from each other modality's tokens and its aggregates ``gathered[j]`` (B, A, width)."""
        slots = []
        for j, t_j in enumerate(tokens):
            agg_j = gathered[j]
            if j == target or agg_j is None:
                continue
            agg_i = self.aggregates[target].to(t_j.dtype).expand(agg_j.shape[0], -1, -1)
            t_ij = self.pair_attention[f"{target}_{j}"](agg_i, agg_j)
            t_att = self.token_attention[f"{target}_{j}"](t_j, t_ij)
            present = available[:, j].view(-1, 1, 1)
            slots.append(torch.where(present, t_att, torch.zeros((), dtype=t_att.dtype, device=t_att.device)))
        return self.mlps[target](torch.cat(slots, dim=-1))

    def dense(self, tokens: Tensor, present: Tensor, radius: int) -> tuple[Tensor, Tensor]:
        """Canvas tokens (B, H, W, M, width) with the missing token of each pixel projected from its neighbourhood.

        ``present`` (B, H, W, M) is each pixel's availability. A pixel missing modality i with another
        present gets T'_i from the (2 radius + 1)^2 tokens around it of each present modality (the
        aggregates gather from them, its own token is the query of the last attention): the patch path's
        projection of the centre of a patch around the pixel, with the patch's missing pixels left out.
        Returns the tokens and ``replaced`` (B, H, W, M), where T' stands in.
        """
        count_m = tokens.shape[3]
        side = 2 * radius + 1
        replaced = ~present & present.any(dim=-1, keepdim=True)
        wanted = [j for j in range(count_m) if bool((replaced.any(dim=-1) & present[..., j]).any())]
        # each source modality's keys and values once per canvas pixel, for the neighbourhoods to read
        keys_values = {j: [nn.functional.pad(x, (0, 0, radius, radius, radius, radius))
                           for x in self.gatherer(j).keys_values(tokens[..., j, :])] for j in wanted}
        padded_present = nn.functional.pad(present, (0, 0, radius, radius, radius, radius), value=False)
        step = torch.arange(side, device=tokens.device)
        offsets_r = step.repeat_interleave(side).view(1, -1)
        offsets_c = step.repeat(side).view(1, -1)
        out = tokens
        for i in range(count_m):
            b, r, c = replaced[..., i].nonzero(as_tuple=True)
            count = b.numel()
            if count == 0:
                continue
            if count < ROW_STABLE_BATCH:  # repeat the first pixel: see ROW_STABLE_BATCH
                b, r, c = (torch.cat([v, v[:1].expand(ROW_STABLE_BATCH - count)]) for v in (b, r, c))
            rows, cols, batch = r.view(-1, 1) + offsets_r, c.view(-1, 1) + offsets_c, b.view(-1, 1)
            here = present[b, r, c]
            own: list[Tensor] = []
            gathered: list[Tensor | None] = []
            for j in range(count_m):
                own.append(tokens[b, r, c, j].unsqueeze(1) if j != i else tokens.new_empty(0))
                if j == i or j not in keys_values:
                    gathered.append(None)
                    continue
                keys, values = (x[batch, rows, cols] for x in keys_values[j])  # (n, side^2, width)
                # a row without modality j gets a zero slot: it reads every key, so no row reads none
                ignore = ~padded_present[batch, rows, cols, j] & here[:, j : j + 1]
                with sdpa_kernel(SDPBackend.MATH):
                    gathered.append(self.gatherer(j).attend(self.aggregates[j].to(tokens.dtype)[None], keys, values, ignore))
            with sdpa_kernel(SDPBackend.MATH):
                projected = self.project(own, here, i, gathered)[:count, 0].to(tokens.dtype)
            out = out.index_put((b[:count], r[:count], c[:count], torch.full_like(b[:count], i)), projected)
        return out, replaced


def with_unmasked_copies(
    inputs: dict[str, Tensor], available: Tensor, real: Tensor, targets: Tensor
) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
    """The batch with every masked sample appended once more under its real availability.

    Under a protocol that already leaves most samples incomplete (eta 90 %: one
    in ten complete), MMP's mask would leave about a third of the few complete
    ones complete, so the head barely sees both modalities together. Appending
    the unmasked copies keeps the protocol's complete samples for the task
    while each masked copy still trains the projection.
    """
    rows = (real & ~available).any(dim=1).nonzero(as_tuple=True)[0]
    if rows.numel() == 0:
        return inputs, available, real, targets
    grown = {m: torch.cat([v, v.index_select(0, rows)]) for m, v in inputs.items()}
    copies = real.index_select(0, rows)
    return grown, torch.cat([available, copies]), torch.cat([real, copies]), torch.cat([targets, targets.index_select(0, rows)])


@register("mmp")
class MMP(PatchTransformerClassifier):
    """Masked Modality Projection on the open_clip backbone (see the module docstring)."""

    default_params = MMP_PARAMS
    param_rules = {**PatchTransformerClassifier.param_rules, "keep_complete": TRUE_OR_FALSE}
    masks_modalities_in_training = True
    supports_dense = True
    # on the frozen pretrained backbone the dense path was ahead of the patch path on every seed of MUUFL's HS 75 / LiDAR 75
    # and HS 65 / LiDAR 65 rows, by 2.5 to 5.0 points, level with the dense probe, and spread 1.05 and 0.29 where patches
    # spread 2.42 and 2.38 (docs/accuracy.md); trained whole from scratch its dense accuracy is not measured: patches
    frozen_dense_by_default = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        p = self.params
        if not 0 <= float(p["mask_prob"]) < 1:
            raise ValueError(f"mask_prob must lie in [0, 1), got {p['mask_prob']}")
        TRUE_OR_FALSE.check("keep_complete", p["keep_complete"])
        if len(config.modalities) < 2:
            raise ValueError(f"MMP projects a missing modality from the others: it needs two or more, got {config.modalities}")
        heads = int(p["projection_heads"] or self.backbone.heads)
        self.projector = MaskedModalityProjection(
            config.modalities, self.backbone.width, heads, int(p["num_aggregate_tokens"]), float(p["mlp_ratio"])
        )
        self._real_available: Tensor | None = None

    # -- tokens ------------------------------------------------------------
    def tokens(self, inputs: dict[str, Tensor], available: Tensor) -> Tensor:
        return self.projected_tokens(inputs, available)[0]

    def projected_tokens(self, inputs: dict[str, Tensor], available: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Tokens entering the backbone, with every missing modality's tokens projected.

        Returns:
            tokens (B, M*N, width): real tokens where available, T' where missing;
            projected (B, M, N, width): T' of each missing (sample, modality), zeros elsewhere;
            replaced (B, M) bool: where T' was used (``~available``).
        """
        real = self.projection(inputs, available)  # a missing modality's slice is overwritten below
        slices = self.projection.modality_slices()
        groups = [real[:, part] for part in slices]
        projected = torch.zeros(
            (real.shape[0], len(slices), *groups[0].shape[1:]), dtype=real.dtype, device=real.device
        )
        for i in range(len(groups)):
            rows = (~available[:, i]).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            others = [g.index_select(0, rows) for g in groups]
            t_i = self.projector(others, available.index_select(0, rows), target=i).to(real.dtype)
            groups[i] = groups[i].index_copy(0, rows, t_i)
            projected[:, i] = projected[:, i].index_copy(0, rows, t_i)
        return torch.cat(groups, dim=1), projected, ~available

    # -- dense path (models.dense) ------------------------------------------------
    @property
    def projection_radius(self) -> int:
        """Pixels around a pixel its projected tokens read on the dense path: the patch path's patch, P // 2."""
        return self.config.patch_size // 2

    @property
    def receptive_radius(self) -> int:
        return super().receptive_radius + self.projection_radius

    def dense_tokens(self, inputs: dict[str, Tensor], available: Tensor, canvas: dense.Canvas) -> Tensor:
        return self.dense_projected_tokens(inputs, available, canvas)[0]

    def dense_projected_tokens(self, inputs: dict[str, Tensor], available: Tensor, canvas: dense.Canvas) -> tuple[Tensor, Tensor]:
        """Canvas tokens (B, Hc, Wc, M, width), every missing token of a pixel with another modality projected
        (:meth:`MaskedModalityProjection.dense`), and where T' stands in (B, Hc, Wc, M)."""
        real = self.projection.dense(inputs, available, canvas)
        present = dense.place(available, canvas, False).permute(0, 2, 3, 1)
        return self.projector.dense(real, present, self.projection_radius)

    def dense_training_patterns(self, patterns: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """MMP's mask of the regions, where the protocol withheld nothing (protocol ``none``); else the protocol's.

        A protocol that leaves regions incomplete already gives the projection its targets (every
        withheld pixel the scene has); masking its complete regions again would leave few complete
        ones, the double masking ``keep_complete`` undoes on the patch path.
        """
        if bool((~patterns).any()):
            return patterns
        return mmp_mask(patterns, float(self.params["mask_prob"]), generator)

    def dense_training_loss(self, inputs: dict[str, Tensor], available: Tensor, real: Tensor, targets: Tensor,
                            origin: Tensor | None, margin: int, stage: str) -> dict[str, Tensor]:
        """Masked cross-entropy plus ``align_weight * SmoothL1(T'_i, T_i)`` over the withheld tokens the crops have.

        Every pixel whose modality the training masks withheld but the scene has (``real & ~available``) and
        that T' fills is a target: the token the dense projection gives it there, detached.
        """
        canvas = self.dense_canvas(inputs, available, origin)
        tokens, replaced = self.dense_projected_tokens(inputs, available, canvas)
        logits = self.dense_logits(tokens, available, canvas, margin)
        ce = nn.functional.cross_entropy(logits.float(), targets, ignore_index=-1)
        withheld = replaced & dense.place(real, canvas, False).permute(0, 2, 3, 1)
        if bool(withheld.any()):
            with torch.no_grad():
                truth = self.projection.dense(inputs, real, canvas)
            align = nn.functional.smooth_l1_loss(tokens[withheld].float(), truth[withheld].float())
        else:
            align = ce.new_zeros(())
        loss = ce + float(self.params["align_weight"]) * align
        return {"loss": loss, "ce": ce.detach(), "align": align.detach(), "masked": withheld.float().mean()}

    # -- training hooks --------------------------------------------------------
    def training_availability(self, available: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """MMP's mask of the batch's complete samples; the real availability is kept for :meth:`training_loss`'s targets.

        Samples a protocol (``eta``, ``rates``) or the scene already left
        incomplete keep what they have: masking them again would stack MMP's
        drop on the protocol's, so that under eta 70 % barely one sample in ten
        stays complete and the head rarely sees a complete one. Under protocol
        ``mmp`` (all samples complete) this is exactly the protocol's draw.
        """
        self._real_available = available.clone()
        complete = available.all(dim=1, keepdim=True)
        masked = mmp_mask(available, float(self.params["mask_prob"]), generator)
        return torch.where(complete, masked, available)

    def training_loss(self, inputs: dict[str, Tensor], available: Tensor, targets: Tensor, stage: str) -> dict[str, Tensor]:
        """Cross-entropy plus ``align_weight * SmoothL1(T'_i, T_i)`` over the masked (sample, modality) pairs.

        The masked modalities are those available in the batch given to
        :meth:`training_availability` and dropped by its mask; called without
        it, nothing counts as masked and the loss is the cross-entropy.
        """
        real, self._real_available = self._real_available, None
        real = real.to(available.device) if real is not None else None
        if real is None or real.shape != available.shape or bool((available & ~real).any()):
            real = available
        self.check_inputs(inputs, available)
        if self.params["keep_complete"]:
            inputs, available, real, targets = with_unmasked_copies(inputs, available, real, targets)
        tokens, projected, _ = self.projected_tokens(inputs, available)
        logits = self.classify_tokens(tokens, available)
        ce = nn.functional.cross_entropy(logits, targets)
        masked = real & ~available
        if bool(masked.any()):
            with torch.no_grad():
                truth = self.projection(inputs, real)
            truth = torch.stack([truth[:, part] for part in self.projection.modality_slices()], dim=1)
            align = nn.functional.smooth_l1_loss(projected[masked].float(), truth[masked].float())
        else:
            align = logits.new_zeros(()).float()
        loss = ce + float(self.params["align_weight"]) * align
        return {"loss": loss, "ce": ce.detach(), "align": align.detach(), "masked": masked.float().mean()}
