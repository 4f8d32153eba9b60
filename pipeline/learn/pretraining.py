"""Pretrain the backbone on every pixel of a catalog's scenes, labels unused: ``python -m pipeline.pretrain CATALOG``.

Crops of ``model.patch_size`` around pixels drawn from all scenes (each
modality normalised per band over the drawn pixels) train a masked-pixel
model (``models.pretraining``): hide random tokens and one modality in blobs
and strips, reconstruct the hidden normalised bands. Runs on the GPU when
there is one (bf16 autocast where the hardware has it), shows progress, saves
a resume point every ``save_every`` steps and writes a loss curve. The
result, ``backbone.safetensors``, records the scenes (and their content
hashes) and bands it saw; ``model.pretrained`` takes it, and with
``model.pretrain`` set the pipeline makes it first and reuses it while the
scenes and settings are unchanged (the folder name is their hash).
"""

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

from models.pretraining import MaskedPixelModel, mask_tokens, reconstruction_loss, save_pretrained
from pipeline.config.catalog import Catalog, Pretrain
from pipeline.config.errors import InputError
from pipeline.data.patches import NormStats, compute_norm_stats, gather_patches
from pipeline.devices import autocast, autocast_dtype, deterministic_cuda, pick_device
from pipeline.files import atomic_file, write_json, write_text
from pipeline.learn.training import linear_warmup_decay

log = logging.getLogger(__name__)

BACKBONE_FILE = "backbone.safetensors"
RESUME_FILE = "resume.safetensors"


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
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def pretrained_folder(catalog: Catalog, key: str) -> Path:
    return Path(catalog.output.folder) / "pretrained" / key


def _pool(catalog: Catalog, stores: list[tuple[str, xr.Dataset]], settings: Pretrain) -> tuple[dict[str, np.ndarray], np.ndarray, NormStats]:
    """Crops around up to ``pool_pixels`` pixels where some modality has data, drawn evenly from every scene."""
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
    stats = compute_norm_stats(first[0], modalities, first[1], first[2])
    patches: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    for ds, rows, cols in drawn:
        p, _centre = gather_patches(ds, modalities, rows, cols, catalog.model.patch_size, stats, catalog.output.tile_size)
        for m in modalities:
            patches[m].append(p[m])
    merged = {m: np.concatenate(v) for m, v in patches.items()}
    # A pixel without data is zero-filled on every band by normalise_window; real normalised data is never all zeros.
    present = np.stack([np.any(merged[m] != 0, axis=1) for m in modalities], axis=1)  # (N, M, P, P)
    return merged, present, stats


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
    folder.mkdir(parents=True, exist_ok=True)
    modalities = catalog.scenes[0].modality_names
    patches, present, stats = _pool(catalog, stores, settings)
    bands = [patches[m].shape[1] for m in modalities]
    device = torch.device(device) if device is not None else pick_device()
    dtype = autocast_dtype(device, catalog.model.precision)
    torch.manual_seed(settings.seed)
    model = MaskedPixelModel(modalities, bands, catalog.model.patch_size, catalog.model.backbone).to(device)
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
    tensors = {m: torch.from_numpy(v) for m, v in patches.items()}
    present_t = torch.from_numpy(present)
    n = present.shape[0]
    began = time.perf_counter()
    bar = tqdm(total=settings.steps, initial=start, desc="pretrain", disable=not progress)
    window: list[float] = []
    with deterministic_cuda(device):
        model.train()
        for step in range(start, settings.steps):
            idx = torch.randint(0, n, (settings.batch_size,), generator=generator)
            inputs = {m: t[idx].to(device, non_blocking=True) for m, t in tensors.items()}
            here = present_t[idx]
            visible = mask_tokens(here, generator)
            target = (here & ~visible).to(device)
            with autocast(device, dtype):
                outputs = model(inputs, visible.to(device))
            loss = reconstruction_loss(outputs, inputs, target)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            window.append(float(loss.detach()))
            bar.update(1)
            done = step + 1
            if done % settings.log_every == 0 or done == settings.steps:
                history.append({"step": done, "loss": float(np.mean(window)), "lr": float(schedule.get_last_lr()[0])})
                bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
                window = []
            if done % settings.save_every == 0 and done < settings.steps:
                _save_resume(model, history, folder)
    bar.close()
    metadata: dict[str, Any] = {
        "scenes": [{"name": name, "content_hash": ds.attrs.get("content_hash")} for name, ds in stores],
        "catalog": str(catalog.path) if catalog.path else None, "key": key,
        "normalisation": stats.to_dict(), "pixels": int(n), "steps": settings.steps,
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
