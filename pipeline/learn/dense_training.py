"""Dense training: crops around the training pixels, one dense forward per crop, loss on the labelled pixels only.

The scene, normalised with the training statistics, is held in memory once
(padded by ``pad`` pixels of "nothing available", as outside the scene).
Every epoch lays a grid of ``crop_size`` cells over the scene with a random
offset; each cell holding a training pixel is a crop, and the crops are
shuffled into batches of ``crops_per_batch``. The loss is the cross-entropy
over the training pixels inside the crops (masked cross-entropy, FreeNet's
GS^2 sampling); validation and test labels never enter a loss. A crop may
read ``context`` pixels of scene around its cell (loss still on the cell only).

The windows are anchored to the scene's grid, so a pixel always sits at the
same position inside its window when mapped; in training every crop is told
it starts at a jittered phase of that grid (``grid_jitter``), so each labelled
pixel trains the model at every window position over the epochs, as a patch
model trains its one centre position with every label. It is off by default:
at 4 epochs it helped the demo's eta-50 % 100/50 row (seed 0: 81.7 -> 85.4 %
held-out OA) and cost the MUUFL benchmark scene 5 to 12 points on its
balanced rows (seeds 0 and 1); the ``patch_mean`` readout (``models.classifier``)
did better without it (demo 87.4 %, MUUFL eta-70 % row 78.6 % against 74.1 %).

Missing-modality protocols become spatially coherent masks: each crop is cut
into ``blobs`` regions, isotropic (like clouds) or parallel strips (like a
flight line never flown), and each region takes one availability pattern
drawn by the protocol (``pipeline.learn.protocols``) for the whole epoch at
once, so the pattern fractions over an epoch are the protocol row's. The
scene's real availability is ANDed in; a pixel left with nothing keeps its
real availability (as the patch path does per sample).

Validation classifies the validation pixels as mapping does (tiles with a
halo of the model's receptive radius, on the scene's real availability),
every ``val_every`` epochs and after the last; the weights kept are the
last ones, or with ``training.selection: average`` the mean over the
schedule's tail (``pipeline.learn.averaging``; ``best`` is the patch path's).
Same seed, same weights (CPU).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor
from tqdm.auto import tqdm

from models.base import MissingModalityClassifier
from models.masking import mmp_mask
from pipeline.config.catalog import DenseCrops, Protocol, Training
from pipeline.data.patches import NormStats, Window, normalise_window, pixel_windows, read_window
from pipeline.devices import autocast, autocast_dtype, pick_device
from pipeline.learn.augmentation import SYMMETRIES, dihedral_crops, symmetry_rng, turn
from pipeline.learn.optimisation import StageOptimiser
from pipeline.learn.protocols import protocol_availability

MMP_DROP = 0.5

MEASURED_EPOCHS = 30
"""The schedule the dense path's accuracy was measured at against the patch path (docs/accuracy.md)."""

log = logging.getLogger(__name__)


def short_schedule_warning(epochs: int, max_steps: int | None) -> str | None:
    """What to tell a user whose ``training.epochs`` is shorter than the dense path was measured at, else None.

    At 15 epochs the dense path had not finished learning on the benchmark scenes
    (Trento: 90.4 % against 99.7 % at 30), while the patch path had.
    """
    if epochs >= MEASURED_EPOCHS or max_steps is not None:  # max_steps: a deliberate short run (a smoke test)
        return None
    return (f"training.epochs is {epochs}: the dense path's accuracy was measured at {MEASURED_EPOCHS} epochs and "
            f"at 15 it had not finished learning on the benchmark scenes (docs/accuracy.md); raise training.epochs "
            f"or set model.inference: patch")


def trains_dense(requested_inference: str, method: type[MissingModalityClassifier] | MissingModalityClassifier, *,
                 frozen: bool) -> bool:
    """Whether a method trains densely under catalog ``model.inference``: the one rule ``train`` and ``evaluate`` follow.

    ``dense``: every method with the dense path; ``auto``: the methods whose dense path
    held the patch path's accuracy on every measured row (``dense_by_default``: MaMOL), and
    with the backbone ``frozen`` those whose dense path held it there (``frozen_dense_by_default``:
    the baseline and MMP; docs/accuracy.md); ``patch``: none.
    """
    if requested_inference == "auto":
        return method.supports_dense and (method.dense_by_default or (frozen and method.frozen_dense_by_default))
    return requested_inference == "dense" and method.supports_dense


@dataclass
class SceneArrays:
    """A scene normalised in memory: values (C, H + 2 pad, W + 2 pad) per modality and availability (M, ...)."""

    values: dict[str, np.ndarray]
    available: np.ndarray
    pad: int
    height: int
    width: int

    def masked(self, mask: np.ndarray) -> SceneArrays:
        """The same scene with its availability ANDed with ``mask`` (M, height, width)."""
        p = self.pad
        padded = np.pad(mask, ((0, 0), (p, p), (p, p)), constant_values=False)
        return SceneArrays(self.values, self.available & padded, p, self.height, self.width)

    @classmethod
    def read(cls, ds: xr.Dataset, modalities: list[str], stats: NormStats, pad: int) -> SceneArrays:
        height, width = ds.sizes["y"], ds.sizes["x"]
        data = read_window(ds, modalities, Window(0, 0, height, width), pad)
        return cls(normalise_window(data, modalities, stats), data.available, pad, height, width)

    def crops(self, rows: np.ndarray, cols: np.ndarray, size: int) -> tuple[dict[str, Tensor], Tensor]:
        """Crops (B, C, size, size) and availability (B, M, size, size) with top-left scene pixels ``rows``/``cols``."""
        p = self.pad
        values = {m: torch.from_numpy(np.stack([v[:, r + p : r + p + size, c + p : c + p + size] for r, c in zip(rows, cols)]))
                  for m, v in self.values.items()}
        avail = np.stack([self.available[:, r + p : r + p + size, c + p : c + p + size] for r, c in zip(rows, cols)])
        return values, torch.from_numpy(avail)


def label_raster(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(H, W) int64 class indices at the given pixels, -1 (ignored by the loss) elsewhere."""
    raster = np.full(shape, -1, dtype=np.int64)
    raster[rows, cols] = targets
    return raster


def epoch_crops(rows: np.ndarray, cols: np.ndarray, size: int, rng: np.random.Generator, step: int = 1) -> np.ndarray:
    """Top-left scene pixels (N, 2) of the cells, on a grid of ``size`` with a random offset, that hold a training pixel.

    With ``step`` the model's window W (``size`` a multiple of it), corners sit W/2 past the window grid:
    the canvas then needs W/2 of padding on each side, (size + W)^2 pixels, not the (size + 2W)^2 of a
    corner on the grid (a third less work per crop at size 32, W 8).
    """
    offset = rng.integers(0, size // step, 2) * step + step // 2
    cells = np.unique(np.stack([(rows + offset[0]) // size, (cols + offset[1]) // size], axis=1), axis=0)
    corners = cells * size - offset
    return corners[rng.permutation(len(corners))]


def told_origins(corners: np.ndarray, window: int) -> np.ndarray:
    """Where the model is told crops starting at ``corners`` start: the next pixel half a window past the grid.

    That needs the least canvas, and as the cell offset is random every epoch, the
    shift moves each pixel to another position inside its window (grid jitter).
    """
    return corners + (window // 2 - corners) % window


def crop_targets(labels: np.ndarray, pad: int, corners: np.ndarray, cell: int, context: int) -> np.ndarray:
    """Targets (B, cell, cell) of the central cells of crops whose top-left scene pixels are ``corners`` (context included).

    ``labels`` is the label raster padded by ``pad``. Only the cells have targets (the model is asked
    for their logits alone, ``margin=context``), so each labelled pixel counts in one crop only.
    """
    return np.stack([labels[r + pad + context : r + pad + context + cell, c + pad + context : c + pad + context + cell]
                     for r, c in corners])


def region_patterns(protocol: Protocol, count: int, modalities: list[str], seed: int, generator: torch.Generator) -> np.ndarray:
    """One availability pattern per region (count, M), with the protocol's fractions over the ``count`` regions."""
    if protocol.kind == "mmp":
        return mmp_mask(torch.ones(count, len(modalities), dtype=torch.bool), MMP_DROP, generator).numpy()
    return protocol_availability(protocol, count, modalities, seed)


def coherent_masks(patterns: np.ndarray, size: int, strip_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Masks (B, M, size, size): each crop cut into len(patterns[b]) regions, each region one pattern.

    ``patterns`` is (B, R, M). Regions are the Voronoi cells of R random points:
    isotropic (blobs, like clouds) or, for ``strip_fraction`` of the crops, of
    the points' projection on a random direction (parallel strips, like flight lines).
    """
    batch, regions, _ = patterns.shape
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((batch, patterns.shape[2], size, size), dtype=bool)
    for b in range(batch):
        points = rng.uniform(0, size, (regions, 2)).astype(np.float32)
        if rng.uniform() < strip_fraction:
            angle = rng.uniform(0, np.pi)
            direction = np.array([np.cos(angle), np.sin(angle)], dtype=np.float32)
            along = yy[None] * direction[0] + xx[None] * direction[1]
            distance = np.abs(along - (points @ direction)[:, None, None])
        else:
            distance = (yy[None] - points[:, 0, None, None]) ** 2 + (xx[None] - points[:, 1, None, None]) ** 2
        nearest = distance.argmin(axis=0)  # (size, size) region index
        out[b] = patterns[b][nearest].transpose(2, 0, 1)
    return out


def scene_mask(protocol: Protocol, shape: tuple[int, int], modalities: list[str], seed: int,
               region_pixels: int = 128) -> np.ndarray:
    """A protocol's availability over a whole scene (M, H, W), spatially coherent.

    The scene is cut into Voronoi regions of about ``region_pixels`` pixels
    (the area of a training crop's blob), and each region takes one pattern
    drawn by the protocol, so the pattern fractions over the regions are the
    row's. Evaluation tests both paths on it: a patch sees its centre pixel's
    pattern, a dense tile the mask around it, as a map meets real clouds.
    """
    from scipy.spatial import cKDTree

    height, width = shape
    count = max(1, round(height * width / region_pixels))
    points = np.random.default_rng(seed).uniform((0, 0), (height, width), (count, 2))
    patterns = protocol_availability(protocol, count, modalities, seed)
    yy, xx = np.mgrid[0:height, 0:width]
    _, nearest = cKDTree(points).query(np.stack([yy.ravel(), xx.ravel()], axis=1))
    return patterns[nearest].T.reshape(len(modalities), height, width)


def training_availability(real: Tensor, simulated: np.ndarray) -> Tensor:
    """Real availability ANDed with the simulated masks; a pixel left with nothing keeps its real availability."""
    combined = real & torch.from_numpy(simulated)
    empty = ~combined.any(dim=1, keepdim=True)
    return torch.where(empty, real, combined)


@torch.no_grad()
def predict_dense_at(
    model: MissingModalityClassifier,
    scene: SceneArrays,
    rows: np.ndarray,
    cols: np.ndarray,
    tile: int = 64,
    device: torch.device | None = None,
    precision: str = "float32",
) -> np.ndarray:
    """Class probabilities (N, K) at scene pixels, each tile classified with a halo of the receptive radius."""
    device = device or next(model.parameters()).device
    dtype = autocast_dtype(device, precision)
    halo = model.receptive_radius
    if halo > scene.pad:
        raise ValueError(f"the scene arrays are padded by {scene.pad} px, less than the receptive radius {halo}")
    model.eval()
    out = np.zeros((len(rows), model.config.num_classes), dtype=np.float32)
    for window, idx in pixel_windows(np.asarray(rows), np.asarray(cols), (scene.height, scene.width), tile):
        size_r, size_c = window.height + 2 * halo, window.width + 2 * halo
        r0, c0 = window.row - halo + scene.pad, window.col - halo + scene.pad
        inputs = {m: torch.from_numpy(v[None, :, r0 : r0 + size_r, c0 : c0 + size_c]).to(device) for m, v in scene.values.items()}
        avail = torch.from_numpy(scene.available[None, :, r0 : r0 + size_r, c0 : c0 + size_c]).to(device)
        origin = torch.tensor([[window.row - halo, window.col - halo]])
        with autocast(device, dtype):
            logits = model.forward_dense(inputs, avail, origin, margin=halo)[0]
        r = torch.from_numpy(rows[idx] - window.row)
        c = torch.from_numpy(cols[idx] - window.col)
        out[idx] = torch.softmax(logits[:, r, c].float().T, dim=-1).cpu().numpy()
    return out


def fit_dense(
    model: MissingModalityClassifier,
    ds: xr.Dataset,
    stats: NormStats,
    split: Any,
    training: Training,
    protocol: Protocol,
    seed: int,
    progress: bool = True,
    precision: str = "auto",
    settings: DenseCrops | None = None,
) -> list[dict[str, float]]:
    """Train every stage of ``model`` in place on crops of ``ds`` around ``split``'s training pixels.

    ``training`` is the catalog's training section (epochs, lr, weight decay,
    warm-up, max_steps, grad_clip, and ``dense``: the crops, unless ``settings``
    says otherwise); ``split`` holds train/val rows, cols and targets (class
    indices). Returns one history row per epoch.
    """
    settings = settings or training.dense
    window = int(getattr(model, "window_size", 0) or 0)
    if not model.supports_dense or settings.crop_size % window or settings.context % window:
        raise ValueError(f"training.dense: crop_size ({settings.crop_size}) and context ({settings.context}) must be "
                         f"multiples of the model's window_size ({window}), and the method must have the dense path")
    warning = short_schedule_warning(training.epochs, training.max_steps)
    if warning:
        log.warning(warning)
    if training.selection == "best":
        log.warning("training.selection is 'best', which the patch path alone follows: the dense path validates every "
                    "val_every epochs and keeps the last weights ('last'); set 'average' to keep the mean of the schedule's tail")
    device = pick_device()
    dtype = autocast_dtype(device, precision)
    model.to(device)
    modalities = model.config.modalities
    cell, context = settings.crop_size, settings.context
    size = cell + 2 * context  # what each crop reads; labels only in its central cell
    scene = SceneArrays.read(ds, modalities, stats, pad=max(size, model.receptive_radius))
    labels = label_raster((scene.height, scene.width), split.train_rows, split.train_cols, split.train_targets)
    labels = np.pad(labels, scene.pad, constant_values=-1)
    rng = np.random.default_rng(seed)
    symmetries = symmetry_rng(seed)  # its own stream: the crops and masks are those drawn without
    generator = torch.Generator().manual_seed(seed)
    regions = round(settings.blobs * (size / cell) ** 2)  # regions of the same area whatever the context
    history: list[dict[str, Any]] = []
    for stage in model.stages():
        params = model.configure_stage(stage)
        if not params:
            continue
        # Every epoch's cells are drawn before the first step: how many hold a training pixel depends on the
        # grid offset, so the schedule can only end at 0 on the last batch of the last epoch if it counts them.
        epoch_corners = [epoch_crops(split.train_rows, split.train_cols, cell, rng, 1 if settings.grid_jitter else window)
                         - context for _ in range(training.epochs)]
        total = sum(math.ceil(len(c) / settings.crops_per_batch) for c in epoch_corners)
        if training.max_steps is not None:
            total = min(total, training.max_steps)
        optimiser = StageOptimiser(params, total, training, model.optimizer_defaults.for_training(dense=True, frozen=model.backbone_frozen))
        bar = tqdm(total=total, desc=f"train {model.config.method}/{stage} (dense)", disable=not progress, leave=False)
        for epoch in range(training.epochs):
            model.train()
            corners = epoch_corners[epoch]
            origins = told_origins(corners, window) if settings.grid_jitter else corners
            patterns = region_patterns(protocol, len(corners) * regions, modalities, seed * 100003 + epoch, generator)
            patterns = model.dense_training_patterns(torch.from_numpy(patterns), generator).numpy()
            patterns = patterns.reshape(len(corners), regions, len(modalities))
            losses = []
            for start in range(0, len(corners), settings.crops_per_batch):
                if optimiser.done:
                    break
                batch = corners[start : start + settings.crops_per_batch]
                inputs, real = scene.crops(batch[:, 0], batch[:, 1], size)
                masks = coherent_masks(patterns[start : start + len(batch)], size, settings.strip_fraction, rng)
                avail = training_availability(real, masks)
                targets = torch.from_numpy(crop_targets(labels, scene.pad, batch, cell, context))
                if training.augment == "dihedral":
                    turns = symmetries.integers(0, SYMMETRIES, len(batch))
                    inputs, avail, targets = dihedral_crops(inputs, avail, targets, turns)
                    real = turn(real, turns)
                origin = torch.from_numpy(origins[start : start + len(batch)].astype(np.int64))
                with autocast(device, dtype):
                    # the cells' losses (margin: the context only feeds them)
                    loss = model.dense_training_loss({m: v.to(device) for m, v in inputs.items()}, avail.to(device),
                                                     real.to(device), targets.to(device), origin, context, stage)["loss"]
                optimiser.step(loss)
                losses.append(float(loss.detach()))
                bar.update(1)
            val_oa = float("nan")
            last = optimiser.done or epoch + 1 == training.epochs
            if last:
                optimiser.keep_average()  # the last validation sees the weights the stage keeps
            if len(split.val_targets) and (epoch == 0 or last or (epoch + 1) % settings.val_every == 0):
                probs = predict_dense_at(model, scene, split.val_rows, split.val_cols, settings.val_tile, device, precision)
                val_oa = float((probs.argmax(1) == split.val_targets).mean())
            history.append({"stage": stage, "epoch": epoch + 1, "step": optimiser.steps,
                            "train_loss": float(np.mean(losses)) if losses else float("nan"),
                            "val_oa": val_oa, "lr": optimiser.lr})
            bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", val_oa=f"{val_oa:.3f}")
            if optimiser.done:
                break
        bar.close()
    return history
