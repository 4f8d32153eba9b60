"""Train a method on a catalog's labelled pixels: ``python -m pipeline.train CATALOG``.

The trainer sees only the model interface (stages, trainable parameters,
training availability, losses), so every registered method trains the same
way. Validation pixels, where the catalog holds some out
(``training.held_out_fraction``), come from the training pool; test pixels are
never looked at here.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from models import (
    ModelConfig,
    PretrainedWeightsError,
    PretrainedWeightsNotFoundError,
    build_model,
    save_checkpoint,
)
from models.base import MissingModalityClassifier
from models.pretraining import init_from_pretrained
from pipeline.config.catalog import Catalog, Protocol, Scene, Training
from pipeline.config.errors import InputError
from pipeline.data.patches import NormStats, compute_norm_stats, gather_patches
from pipeline.devices import autocast, autocast_dtype, deterministic_cuda, pick_device
from pipeline.files import atomic_directory
from pipeline.learn.augmentation import SYMMETRIES, dihedral_patches, symmetry_rng
from pipeline.learn.dense_training import fit_dense, trains_dense
from pipeline.learn.optimisation import StageOptimiser
from pipeline.learn.protocols import MMP_PROTOCOL_DROP, mmp_mask, protocol_availability, save_protocol_table
from pipeline.learn.sampling import Split, make_split
from pipeline.storage import Location, as_location, open_zarr

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    checkpoint: Location  # a folder, or a URL when output.folder is on an object store
    history: list[dict[str, Any]]
    best_val_oa: float
    seconds: float
    split_path: Location
    extra: dict[str, Any] = field(default_factory=dict)


def build_catalog_model(config: ModelConfig, catalog_file: Path | None) -> MissingModalityClassifier:
    """``build_model(config)``; CLIP weights that cannot be read become an :class:`InputError` on ``model.pretrained``."""
    try:
        return build_model(config)
    except (PretrainedWeightsError, PretrainedWeightsNotFoundError) as exc:
        raise InputError(catalog_file, "model.pretrained", "a readable CLIP ViT-B-16 weights file or open_clip tag",
                         str(exc)) from None


def default_checkpoint_dir(catalog: Catalog, scene: Scene, method: str) -> Location:
    return as_location(catalog.output.folder) / scene.name / "checkpoints" / method


def parse_protocol(text: str) -> Protocol:
    """'none', 'mmp', 'eta:0.5' or 'rates:hs=1.0,lidar=0.3' -> Protocol."""
    kind, _, arg = text.partition(":")
    if kind in ("none", "mmp") and not arg:
        return Protocol(kind=kind)  # type: ignore[arg-type]
    if kind == "eta":
        return Protocol(kind="eta", eta=float(arg))
    if kind == "rates":
        rates = {k: float(v) for k, v in (item.split("=") for item in arg.split(","))}
        return Protocol(kind="rates", rates=rates)
    raise ValueError(f"protocol {text!r}: expected none, mmp, eta:<rate> or rates:<modality>=<rate>,...")


def model_config_for(catalog: Catalog, scene: Scene, ds: xr.Dataset, method: str | None = None) -> ModelConfig:
    """The model configuration a catalog asks for, with band counts read from the scene store."""
    if scene.labels is None:
        raise InputError(catalog.path, f"scenes[{scene.name!r}].labels", "labels with classes to train a model", "none")
    classes = scene.labels.classes
    from pipeline.learn.pretraining import ensure_pretrained

    pretrained = ensure_pretrained(catalog)
    return ModelConfig(
        method=method or catalog.model.method,
        modalities=scene.modality_names,
        bands=[int(ds.sizes[f"band_{m}"]) for m in scene.modality_names],
        num_classes=len(classes),
        patch_size=catalog.model.patch_size,
        backbone=catalog.model.backbone,
        pretrained=pretrained,
        kinds=[m.kind for m in scene.modalities],
        class_names=[c.name for c in classes],
        class_descriptions=[dict(c.description or {}) for c in classes],
        params=dict(catalog.model.params),
    )


MASK_SEED_STEP = 100003  # epoch e of seed s draws its protocol masks with seed s + e * MASK_SEED_STEP


def simulated_availability(protocol: Protocol, real: np.ndarray, modalities: list[str], seed: int) -> np.ndarray:
    """The protocol's availability for each sample, ANDed with what the scene really has.

    A sample the protocol would leave with nothing keeps its real availability,
    so no sample is fed to the model with every modality missing.
    """
    simulated = protocol_availability(protocol, real.shape[0], modalities, seed)
    combined = simulated & real
    empty = ~combined.any(axis=1)
    combined[empty] = real[empty]
    return combined


@torch.no_grad()
def predict(
    model: MissingModalityClassifier,
    patches: dict[str, np.ndarray],
    available: np.ndarray,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    precision: str = "auto",
) -> np.ndarray:
    """Class probabilities (N, K) for in-memory patches, on ``device`` (default: the GPU when there is one).

    The model is moved to ``device``; ``precision`` picks the autocast dtype as mapping does
    (``pipeline.devices.autocast_dtype``: bf16 where the hardware has it).
    """
    device = torch.device(device) if device is not None else pick_device()
    dtype = autocast_dtype(device, precision)
    model.to(device).eval()
    n = available.shape[0]
    out = []
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        inputs = {m: torch.from_numpy(v[sl]).to(device, non_blocking=True) for m, v in patches.items()}
        avail = torch.from_numpy(available[sl]).to(device)
        with autocast(device, dtype):
            logits = model(inputs, avail)
        out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.num_classes), dtype=np.float32)


def _write_history(history: list[dict[str, Any]], folder: Path) -> None:
    if not history:
        return
    keys = sorted({k for row in history for k in row}, key=lambda k: (k not in ("stage", "epoch"), k))
    with open(folder / "training_log.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    (folder / "training_log.json").write_text(json.dumps(history, indent=1))
    from matplotlib.figure import (
        Figure,  # no pyplot: never switches a notebook's backend
    )

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    epochs = np.arange(1, len(history) + 1)
    ax.plot(epochs, [h["train_loss"] for h in history], label="training loss")
    ax.set_xlabel("epoch (all stages)")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h["val_oa"] for h in history], color="tab:orange", label="validation OA")
    ax2.set_ylabel("validation OA")
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(folder / "loss_curve.png", dpi=100)


def step_availability(
    model: MissingModalityClassifier, protocol: Protocol | None, available: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """The availability one training step uses for a batch.

    Protocol ``mmp`` means one thing for every method: each available modality is
    dropped with p = 0.5 anew at every step, at least one kept (``mmp_mask``).
    A model whose own training mask is that draw (``masks_modalities_in_training``,
    MMP) is not masked twice. Then the model's own hook runs.
    """
    if protocol is not None and protocol.kind == "mmp" and not model.masks_modalities_in_training:
        available = mmp_mask(available, MMP_PROTOCOL_DROP, generator)
    return model.training_availability(available, generator)


def fit(
    model: MissingModalityClassifier,
    train_patches: dict[str, np.ndarray],
    train_avail: np.ndarray,
    train_targets: np.ndarray,
    val_patches: dict[str, np.ndarray],
    val_avail: np.ndarray,
    val_targets: np.ndarray,
    training: Training,
    seed: int,
    progress: bool = True,
    device: str | torch.device | None = None,
    precision: str = "auto",
    protocol: Protocol | None = None,
    train_real: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """Train every stage of ``model`` in place, on ``device`` (default: the GPU when there is one).

    ``train_avail`` is the training samples' availability under ``protocol``;
    with ``train_real`` (their real availability) and ``training.protocol_masks:
    per_epoch``, every epoch after the first draws the protocol's patterns anew
    (:func:`simulated_availability`), so each pixel trains under every pattern
    over the epochs instead of one.

    Each stage runs its whole learning-rate schedule (warm-up, then linear decay
    to 0). ``training.selection`` says which weights a stage keeps: ``last`` (the
    default: the end of the annealed schedule), ``best`` (best validation OA,
    stopping after ``training.patience`` epochs without progress) or ``average``
    (the mean over the schedule's last ``training.average_fraction`` of steps,
    :mod:`pipeline.learn.averaging`). Gradients are
    clipped to norm ``training.grad_clip``. With ``training.augment: dihedral``
    each patch of a batch is turned and mirrored at random
    (:mod:`pipeline.learn.augmentation`). Shuffling and masking draw from a CPU
    generator seeded with ``seed``, so one seed gives the same batches on any
    device, and the same weights on one device (CUDA runs deterministic kernels).
    """
    device = torch.device(device) if device is not None else pick_device()
    dtype = autocast_dtype(device, precision)
    model.to(device)
    selection = training.selection
    defaults = model.optimizer_defaults.for_training(dense=False, frozen=model.backbone_frozen)
    batch_size = training.batch_size if training.batch_size is not None else defaults.batch_size
    generator = torch.Generator().manual_seed(seed)
    n = train_avail.shape[0]
    history: list[dict[str, Any]] = []
    targets_t = torch.from_numpy(train_targets.astype(np.int64))
    tensors = {m: torch.from_numpy(v) for m, v in train_patches.items()}
    avail_t = torch.from_numpy(train_avail)
    redraw = protocol is not None and train_real is not None and training.protocol_masks == "per_epoch"
    symmetries = symmetry_rng(seed)  # its own stream: the batches and masks are those drawn without
    with deterministic_cuda(device):
        for stage in model.stages():
            params = model.configure_stage(stage)
            if not params:
                continue
            steps_per_epoch = math.ceil(n / batch_size)
            total = training.epochs * steps_per_epoch
            if training.max_steps is not None:
                total = min(total, training.max_steps)
            optimiser = StageOptimiser(params, total, training, defaults)
            best_oa, best_state, stale = -1.0, None, 0
            bar = tqdm(total=total, desc=f"train {model.config.method}/{stage}", disable=not progress, leave=False)
            for epoch in range(training.epochs):
                model.train()
                if redraw and epoch:
                    assert protocol is not None and train_real is not None
                    drawn = simulated_availability(protocol, train_real, model.config.modalities, seed + MASK_SEED_STEP * epoch)
                    avail_t = torch.from_numpy(drawn)
                order = torch.randperm(n, generator=generator)
                losses = []
                for start in range(0, n, batch_size):
                    if optimiser.done:
                        break
                    idx = order[start : start + batch_size]
                    batch = {m: t[idx] for m, t in tensors.items()}
                    if training.augment == "dihedral":
                        batch = dihedral_patches(batch, symmetries.integers(0, SYMMETRIES, len(idx)))
                    inputs = {m: v.to(device, non_blocking=True) for m, v in batch.items()}
                    avail = step_availability(model, protocol, avail_t[idx], generator).to(device)
                    with autocast(device, dtype):
                        parts = model.training_loss(inputs, avail, targets_t[idx].to(device), stage)
                    optimiser.step(parts["loss"])
                    losses.append(float(parts["loss"].detach()))
                    bar.update(1)
                if optimiser.done or epoch + 1 == training.epochs:
                    optimiser.keep_average()  # the last validation sees the weights the stage keeps
                probs = predict(model, val_patches, val_avail, device=device, precision=precision)
                val_oa = float((probs.argmax(1) == val_targets).mean()) if len(val_targets) else float("nan")
                history.append({"stage": stage, "epoch": epoch + 1, "step": optimiser.steps, "train_loss": float(np.mean(losses)) if losses else float("nan"), "val_oa": val_oa, "lr": optimiser.lr})
                bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", val_oa=f"{val_oa:.3f}")
                if selection == "best":
                    if not len(val_targets) or val_oa > best_oa:
                        best_oa, stale = val_oa, 0
                        best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                    else:
                        stale += 1
                if optimiser.done or (selection == "best" and stale >= training.patience):
                    break
            bar.close()
            if best_state is not None:
                model.load_state_dict(best_state)
    return history


@dataclass
class TrainingData:
    """A scene's training and validation patches, split and normalisation, ready for ``fit``."""

    ds: xr.Dataset
    config: ModelConfig
    split: Split
    stats: NormStats
    modalities: list[str]
    train_patches: dict[str, np.ndarray]
    train_real: np.ndarray
    val_patches: dict[str, np.ndarray]
    val_real: np.ndarray


def prepare_training_data(catalog: Catalog, scene: Scene, seed: int, method: str | None = None) -> TrainingData:
    """Ingest (if needed), draw the split with ``seed``, compute normalisation, gather patches."""
    from pipeline.data.ingest import ingest_scene

    store = ingest_scene(catalog, scene)
    ds = open_zarr(store)
    config = model_config_for(catalog, scene, ds, method)
    assert scene.labels is not None
    split = make_split(ds, scene.labels, catalog.training, seed, catalog.path)
    modalities = scene.modality_names
    stats = compute_norm_stats(ds, modalities, split.train_rows, split.train_cols)
    tile = catalog.output.tile_size
    train_p, train_real = gather_patches(ds, modalities, split.train_rows, split.train_cols, config.patch_size, stats, tile)
    val_p, val_real = gather_patches(ds, modalities, split.val_rows, split.val_cols, config.patch_size, stats, tile)
    # A labelled pixel where no modality is available (cloud over a LiDAR gap) can't teach anything.
    keep_train, keep_val = train_real.any(axis=1), val_real.any(axis=1)
    split.train_rows, split.train_cols, split.train_targets = (a[keep_train] for a in (split.train_rows, split.train_cols, split.train_targets))
    split.val_rows, split.val_cols, split.val_targets = (a[keep_val] for a in (split.val_rows, split.val_cols, split.val_targets))
    train_p = {m: v[keep_train] for m, v in train_p.items()}
    val_p = {m: v[keep_val] for m, v in val_p.items()}
    train_real, val_real = train_real[keep_train], val_real[keep_val]
    if not len(split.train_targets):
        raise InputError(catalog.path, f"scenes[{scene.name!r}].labels", "training pixels where some modality is available", "none")
    return TrainingData(ds, config, split, stats, modalities, train_p, train_real, val_p, val_real)


def train(
    catalog: Catalog,
    scene_name: str | None = None,
    method: str | None = None,
    seed: int | None = None,
    protocol: Protocol | None = None,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    extra_metadata: dict[str, Any] | None = None,
) -> TrainResult:
    """Train the catalog's (or ``method``'s) model on a scene and write its checkpoint."""
    scene = catalog.scene(scene_name)
    seed = catalog.training.seed if seed is None else seed
    protocol = protocol or catalog.training.protocol
    started = time.perf_counter()
    data = prepare_training_data(catalog, scene, seed, method)
    ds, config, split, stats, modalities = data.ds, data.config, data.split, data.stats, data.modalities
    folder = checkpoint_dir or default_checkpoint_dir(catalog, scene, config.method)
    train_p, val_p = data.train_patches, data.val_patches
    train_avail = simulated_availability(protocol, data.train_real, modalities, seed)
    val_avail = simulated_availability(protocol, data.val_real, modalities, seed + 1)

    torch.manual_seed(seed)
    model = build_catalog_model(config, catalog.path)
    init_from_pretrained(model)
    log.info("training %s on %d pixels (%d validation), %d classes", config.method, len(split.train_rows), len(split.val_rows), config.num_classes)
    dense = trains_dense(catalog.model.inference, model, frozen=model.backbone_frozen)
    if dense:  # crops around the training pixels, masked cross-entropy (pipeline.learn.dense_training)
        history = fit_dense(model, ds, stats, split, catalog.training, protocol, seed, progress, catalog.model.precision)
    else:
        history = fit(model, train_p, train_avail, split.train_targets, val_p, val_avail, split.val_targets, catalog.training, seed, progress,
                      precision=catalog.model.precision, protocol=protocol, train_real=data.train_real)

    assert scene.labels is not None  # model_config_for refused a scene without labels
    metadata = {
        "normalisation": stats.to_dict(),
        "classes": [c.model_dump(mode="json") for c in scene.labels.classes],
        "scene": scene.name,
        "catalog": str(catalog.path) if catalog.path else None,
        "catalog_hash": catalog.content_hash(),
        "scene_hash": ds.attrs.get("content_hash"),
        "seed": seed,
        "protocol": protocol.model_dump(),
        "train_pixels": int(len(split.train_rows)),
        "val_pixels": int(len(split.val_rows)),
        "best_val_oa": max((h["val_oa"] for h in history), default=float("nan")),
        "split_file": "split.npz",
        "training_path": "dense" if dense else "patch",
        **(extra_metadata or {}),
    }
    # The checkpoint folder, with the run's records, appears complete or not at all.
    with atomic_directory(folder) as staging:
        save_checkpoint(model, staging, metadata)
        split.save(staging / "split.npz")
        save_protocol_table(staging / "protocol_train.csv", train_avail, modalities, {"seed": seed, "protocol": protocol.model_dump()})
        _write_history(history, staging)
    seconds = time.perf_counter() - started
    return TrainResult(folder, history, metadata["best_val_oa"], seconds, folder / "split.npz")
