"""Pretrain the backbone on every pixel of a catalog's scenes, labels unused: ``python -m pipeline.pretrain CATALOG``.

Masked modelling (``models.pretraining``): hide random tokens and one modality
in blobs and strips, reconstruct the hidden normalised bands. On the dense
path (``model.pretrain.path: dense``) the scenes are held in memory,
normalised per band over ``pool_pixels`` drawn pixels, and each step
reconstructs whole ``crop_size`` crops around drawn pixels through the
windowed blocks the dense classifier uses; on the patch path each drawn
pixel gives one ``model.patch_size`` crop. Runs on the GPU when there is one
(bf16 autocast where the hardware has it), shows progress, saves a resume
point every ``save_every`` steps and writes a loss curve. The result,
``backbone.safetensors``, records the scenes (and their content hashes),
bands and path it saw; ``model.pretrained`` takes it, and with
``model.pretrain`` set the pipeline makes it first and reuses it while the
scenes and settings are unchanged (the folder name is their hash)."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from models.classifier import COMMON_PARAMS
from models.pretraining import MaskedPixelModel, mask_tokens, reconstruction_loss, save_pretrained
from pipeline.config.catalog import Catalog, Pretrain
from pipeline.config.errors import InputError
from pipeline.data.patches import NormStats, compute_norm_stats, gather_patches
from pipeline.devices import autocast, autocast_dtype, deterministic_cuda, pick_device
from pipeline.files import atomic_file, write_json, write_text
from pipeline.learn.dense_training import SceneArrays
from pipeline.learn.optimisation import linear_warmup_decay

log = logging.getLogger(__name__)

BACKBONE_FILE = "backbone.safetensors"
RESUME_FILE = "resume.safetensors"
BATCH_SIZES = {"dense": 16, "patch": 256}  # crops per step when model.pretrain.batch_size is none: about as many tokens


def pretrain_settings(catalog: Catalog) -> Pretrain:
    """The catalog's ``model.pretrain`` section (defaults when it is just ``true``)."""
    spec = catalog.model.pretrain
    return spec if isinstance(spec, Pretrain) else Pretrain()


def _scene_stores(catalog: Catalog) -> list[tuple[str, xr.Dataset]]:
    from pipeline.data.ingest import ingest_scene

    return [(scene.name, xr.open_zarr(ingest_scene(catalog, scene))) for scene in catalog.scenes]


def pretrain_key(catalog: Catalog, stores: list[tuple[str, xr.Dataset]], settings: Pretrain) -> str:
    """What the result depends on: scene contents, modalities and bands, backbone, patch size and the settings."""
    parts = {
        "scenes": [(name, ds.attrs.get("content_hash")) for name, ds in stores],
        "modalities": catalog.scenes[0].modality_names,
        "backbone": catalog.model.backbone, "patch_size": catalog.model.patch_size,
        "settings": settings.model_dump(mode="json"),
        "window_size": pretrain_window(catalog) if settings.path == "dense" else None,
        "local_kernel": pretrain_local_kernel(catalog) if settings.path == "dense" else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def pretrained_folder(catalog: Catalog, key: str) -> Path:
    return Path(catalog.output.folder) / "pretrained" / key


def _draw(catalog: Catalog, stores: list[tuple[str, xr.Dataset]], settings: Pretrain) -> tuple[list[tuple[xr.Dataset, np.ndarray, np.ndarray]], NormStats]:
    """Up to ``pool_pixels`` pixels where some modality has data, drawn evenly from every scene, and the normalisation."""
    modalities = catalog.scenes[0].modality_names
    rng = np.random.default_rng(settings.seed)
    per_scene = max(1, settings.pool_pixels // len(stores))
    drawn = []
    for name, ds in stores:
        if [str(m) for m in ds["available"]["modality"].values] != modalities:
            raise InputError(catalog.path, f"scenes[{name!r}].modalities", f"the modalities {modalities} of the first scene", "others")
        any_data = ds["available"].any("modality").values
        rows, cols = np.nonzero(any_data)
        if not rows.size:
            raise InputError(catalog.path, f"scenes[{name!r}]", "pixels where some modality has data", "none")
        pick = rng.choice(rows.size, size=min(per_scene, rows.size), replace=False)
        drawn.append((ds, np.sort(rows[pick]), np.sort(cols[pick])))
    first = drawn[0]
    return drawn, compute_norm_stats(first[0], modalities, first[1], first[2])


class PatchPool:
    """The patch path's data: a ``patch_size`` crop around every drawn pixel, in memory."""

    def __init__(self, catalog: Catalog, drawn: list[tuple[xr.Dataset, np.ndarray, np.ndarray]], stats: NormStats) -> None:
        modalities = catalog.scenes[0].modality_names
        patches: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
        for ds, rows, cols in drawn:
            p, _centre = gather_patches(ds, modalities, rows, cols, catalog.model.patch_size, stats, catalog.output.tile_size)
            for m in modalities:
                patches[m].append(p[m])
        merged = {m: np.concatenate(v) for m, v in patches.items()}
        # A pixel without data is zero-filled on every band by normalise_window; real normalised data is never all zeros.
        self.present = torch.from_numpy(np.stack([np.any(merged[m] != 0, axis=1) for m in modalities], axis=1))  # (N, M, P, P)
        self.tensors = {m: torch.from_numpy(v) for m, v in merged.items()}
        self.bands = [v.shape[1] for v in merged.values()]
        self.pixels = int(self.present.shape[0])

    def batch(self, size: int, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """``size`` patches (inputs, availability, no origin: a patch has no place on the window grid)."""
        idx = torch.randint(0, self.pixels, (size,), generator=generator)
        return {m: t[idx] for m, t in self.tensors.items()}, self.present[idx], None


class CropPool:
    """The dense path's data: the scenes normalised in memory, ``crop_size`` crops around the drawn pixels."""

    def __init__(self, catalog: Catalog, drawn: list[tuple[xr.Dataset, np.ndarray, np.ndarray]], stats: NormStats,
                 crop_size: int) -> None:
        modalities = catalog.scenes[0].modality_names
        self.crop_size = crop_size
        self.scenes = [SceneArrays.read(ds, modalities, stats, pad=crop_size) for ds, _rows, _cols in drawn]
        # every drawn pixel as (scene, top-left row, top-left col) of the crop centred on it
        self.corners = np.concatenate([np.stack([np.full(rows.size, i), rows - crop_size // 2, cols - crop_size // 2], axis=1)
                                       for i, (_ds, rows, cols) in enumerate(drawn)])
        self.bands = [self.scenes[0].values[m].shape[0] for m in modalities]
        self.pixels = int(len(self.corners))

    def batch(self, size: int, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """``size`` crops (inputs, availability, scene origins), grouped by scene."""
        picked = self.corners[torch.randint(0, self.pixels, (size,), generator=generator).numpy()]
        picked = picked[np.argsort(picked[:, 0], kind="stable")]
        parts = [self.scenes[i].crops(picked[picked[:, 0] == i, 1], picked[picked[:, 0] == i, 2], self.crop_size)
                 for i in np.unique(picked[:, 0])]
        inputs = {m: torch.cat([values[m] for values, _ in parts]) for m in parts[0][0]}
        return inputs, torch.cat([avail for _, avail in parts]), torch.from_numpy(picked[:, 1:].astype(np.int64))


def pretrain_window(catalog: Catalog) -> int:
    """The dense path's window (``model.params.window_size``, else the classifiers' default): the one the backbone will meet."""
    return int(catalog.model.params.get("window_size", COMMON_PARAMS["window_size"]))


def pretrain_local_kernel(catalog: Catalog) -> int:
    """The dense path's local convolution (``model.params.local_kernel``, else the classifiers' default), pretrained with the tokenizer."""
    return int(catalog.model.params.get("local_kernel", COMMON_PARAMS["local_kernel"]))


def pretrain(catalog: Catalog, output: Path | None = None, progress: bool = True, device: str | torch.device | None = None) -> Path:
    """Pretrain (or resume, or reuse) the catalog's backbone; returns the ``backbone.safetensors`` path."""
    settings = pretrain_settings(catalog)
    stores = _scene_stores(catalog)
    key = pretrain_key(catalog, stores, settings)
    folder = output or pretrained_folder(catalog, key)
    result = folder / BACKBONE_FILE
    if result.is_file():
        log.info("pretrained backbone %s is up to date (scenes unchanged): reused", result)
        return result
    window = pretrain_window(catalog) if settings.path == "dense" else None
    if window is not None and settings.crop_size % window:
        raise InputError(catalog.path, "model.pretrain.crop_size", f"a multiple of model.params.window_size ({window})",
                         str(settings.crop_size))
    folder.mkdir(parents=True, exist_ok=True)
    modalities = catalog.scenes[0].modality_names
    drawn, stats = _draw(catalog, stores, settings)
    pool = CropPool(catalog, drawn, stats, settings.crop_size) if window is not None else PatchPool(catalog, drawn, stats)
    batch_size = settings.batch_size or BATCH_SIZES[settings.path]
    device = torch.device(device) if device is not None else pick_device()
    dtype = autocast_dtype(device, catalog.model.precision)
    torch.manual_seed(settings.seed)
    local_kernel = pretrain_local_kernel(catalog) if window is not None else 0
    model = MaskedPixelModel(modalities, pool.bands, catalog.model.patch_size, catalog.model.backbone, window,
                             local_kernel).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, linear_warmup_decay(settings.steps, 0.05))
    history: list[dict[str, float]] = []
    start = 0
    resume = folder / RESUME_FILE
    if resume.is_file():
        state = load_file(str(resume))
        model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
        history = json.loads((folder / "loss.json").read_text()) if (folder / "loss.json").is_file() else []
        start = int(history[-1]["step"]) if history else 0
        for _ in range(start):
            schedule.step()  # the learning rate continues where it stopped (optimiser moments restart)
        log.info("pretraining resumes at step %d of %d", start, settings.steps)
    generator = torch.Generator().manual_seed(settings.seed + start)
    began = time.perf_counter()
    bar = tqdm(total=settings.steps, initial=start, desc=f"pretrain ({settings.path})", disable=not progress)
    losses: list[float] = []
    with deterministic_cuda(device):
        model.train()
        for step in range(start, settings.steps):
            batch, here, origin = pool.batch(batch_size, generator)
            inputs = {m: t.to(device, non_blocking=True) for m, t in batch.items()}
            visible = mask_tokens(here, generator)
            target = (here & ~visible).to(device)
            with autocast(device, dtype):
                if window is not None:
                    outputs = model.forward_dense(inputs, visible.to(device), origin)
                else:
                    outputs = model(inputs, visible.to(device))
            loss = reconstruction_loss(outputs, inputs, target)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            done = step + 1
            if done % settings.log_every == 0 or done == settings.steps:
                history.append({"step": done, "loss": float(np.mean(losses)), "lr": float(schedule.get_last_lr()[0])})
                bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
                losses = []
            if done % settings.save_every == 0 and done < settings.steps:
                _save_resume(model, history, folder)
    bar.close()
    metadata: dict[str, Any] = {
        "scenes": [{"name": name, "content_hash": ds.attrs.get("content_hash")} for name, ds in stores],
        "catalog": str(catalog.path) if catalog.path else None, "key": key,
        "normalisation": stats.to_dict(), "pixels": pool.pixels, "steps": settings.steps, "path": settings.path,
        "final_loss": history[-1]["loss"] if history else None,
        "first_loss": history[0]["loss"] if history else None,
        "settings": settings.model_dump(mode="json"), "seconds": time.perf_counter() - began,
    }
    _write_curve(history, folder)
    write_json(folder / "pretrain.json", metadata)
    with atomic_file(result) as tmp:
        save_pretrained(model, tmp, metadata)
    resume.unlink(missing_ok=True)
    log.info("pretrained backbone written: %s (loss %.4f -> %.4f)", result, metadata["first_loss"] or float("nan"), metadata["final_loss"] or float("nan"))
    return result


def _save_resume(model: MaskedPixelModel, history: list[dict[str, float]], folder: Path) -> None:
    with atomic_file(folder / RESUME_FILE) as tmp:
        save_file({f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    write_text(folder / "loss.json", json.dumps(history))


def _write_curve(history: list[dict[str, float]], folder: Path) -> None:
    write_text(folder / "loss.json", json.dumps(history))
    if not history:
        return
    with atomic_file(folder / "loss.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "loss", "lr"])
        writer.writeheader()
        writer.writerows(history)
    from matplotlib.figure import Figure  # no pyplot: never switches a notebook's backend

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot([h["step"] for h in history], [h["loss"] for h in history])
    ax.set_xlabel("step")
    ax.set_ylabel("reconstruction loss (MSE, normalised bands)")
    ax.set_yscale("log")
    fig.tight_layout()
    with atomic_file(folder / "loss_curve.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def ensure_pretrained(catalog: Catalog, progress: bool = True) -> str | None:
    """What ``model.pretrained`` stands for: the catalog's own value, or a backbone pretrained now (or reused) with ``model.pretrain``."""
    if catalog.model.pretrained is not None:
        return str(catalog.model.pretrained)
    if not catalog.model.pretrain:
        return None
    return str(pretrain(catalog, progress=progress))
