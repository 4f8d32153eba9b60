"""Catalog validation: the shipped catalogs, misspelt keys, relative paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config.catalog import load_catalog
from pipeline.config.errors import CatalogError

CATALOGS = Path(__file__).resolve().parents[3] / "catalogs"
DATA = CATALOGS.parent / "data"


@pytest.mark.parametrize(
    ("name", "modalities", "classes", "first_class"),
    [
        ("demo.yaml", ["hs", "lidar"], 6, "Apple trees"),
        ("trento.yaml", ["hs", "lidar"], 6, "Apple trees"),
        ("trento-hsi-layout.yaml", ["hs", "lidar"], 6, "Apple trees"),
        ("houston2013.yaml", ["hs", "lidar"], 15, "Healthy grass"),
        ("augsburg.yaml", ["hs", "sar", "dsm"], 7, "Forest"),
    ],
)
def test_shipped_catalogs_validate(name: str, modalities: list[str], classes: int, first_class: str) -> None:
    catalog = load_catalog(CATALOGS / name)
    scene = catalog.scenes[0]
    assert scene.modality_names == modalities
    assert scene.labels is not None and len(scene.labels.classes) == classes
    assert scene.labels.classes[0].name == first_class
    for modality in scene.modalities:
        assert all(path.is_absolute() for path in modality.source.files)
    assert catalog.output.folder.is_absolute()


def test_benchmark_band_centres() -> None:
    trento = load_catalog(CATALOGS / "trento.yaml").scenes[0].modality("hs")
    assert len(trento.wavelengths) == 63 and trento.wavelengths[0] == 402 and trento.wavelengths[-1] == 989
    houston = load_catalog(CATALOGS / "houston2013.yaml").scenes[0].modality("hs")
    assert len(houston.wavelengths) == 144 and houston.wavelengths[0] == 380 and houston.wavelengths[-1] == 1050
    assert np.all(np.diff(houston.wavelengths) > 0)


def test_trento_layouts() -> None:
    mirror = load_catalog(CATALOGS / "trento.yaml").scenes[0]
    assert mirror.modality("hs").source.path == DATA.resolve() / "trento" / "Italy_hsi.mat"
    assert mirror.labels.source.key == "mask_test"
    assert mirror.modality("hs").georeference.crs == "EPSG:32632"
    assert mirror.modality("hs").georeference.resolution == 1.0
    other = load_catalog(CATALOGS / "trento-hsi-layout.yaml").scenes[0]
    assert other.modality("lidar").source.key == "Lidar_Trento"
    assert other.labels.train.key == "TrLabel" and other.labels.test.key == "TeLabel"


def test_demo_paths_point_at_the_ignored_data_folder() -> None:
    scene = load_catalog(CATALOGS / "demo.yaml").scenes[0]
    assert scene.generate == "demo"
    assert scene.modality("hs").source.path == DATA.resolve() / "demo" / "hs.tif"
    assert scene.availability.clouds[0].path.name == "clouds.geojson"


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cat.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def minimal() -> dict:
    return {
        "name": "t",
        "scenes": [{
            "name": "s",
            "modalities": [{"name": "hs", "kind": "hs", "source": {"path": "sub/hs.tif"}}],
            "grid": {"from_modality": "hs"},
        }],
    }


def test_relative_paths_resolve_against_the_catalog_folder(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, minimal()))
    assert catalog.scenes[0].modality("hs").source.path == (tmp_path / "sub" / "hs.tif").resolve()


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: d["scenes"][0]["modalities"][0].update(nodat=0), "scenes['s'].modalities['hs'].nodat"),
        (lambda d: d["scenes"][0]["modalities"][0]["source"].update(formt="mat"), "scenes['s'].modalities['hs'].source.formt"),
        (lambda d: d["scenes"][0].update(generate="tomorrow"), "scenes['s'].generate"),
        (lambda d: d.update(outptu={"folder": "x"}), "outptu"),
        (lambda d: d.update(output={"batch_pixels": 0}), "output.batch_pixels"),
        (lambda d: d.update(output={"batch_pixels": "big"}), "output.batch_pixels"),
        (lambda d: d.update(output={"formats": ["html", "png"]}), "output.formats"),  # the web map needs the COGs
    ],
)
def test_a_wrong_key_names_file_and_key(tmp_path: Path, edit, key: str) -> None:
    data = minimal()
    edit(data)
    with pytest.raises(CatalogError) as err:
        load_catalog(write(tmp_path, data))
    assert str(err.value).startswith(str(tmp_path / "cat.yaml"))
    assert f": {key}: expected" in str(err.value)


def test_batch_pixels_auto_is_decided_per_device(tmp_path: Path) -> None:
    import torch

    from pipeline.inference.classify import resolved_batch_pixels

    assert load_catalog(write(tmp_path, minimal())).output.batch_pixels == "auto"
    assert load_catalog(write(tmp_path, {**minimal(), "output": {"batch_pixels": 512}})).output.batch_pixels == 512
    assert resolved_batch_pixels("auto", torch.device("cpu")) == 256
    assert resolved_batch_pixels("auto", torch.device("cuda")) == 4096
    assert resolved_batch_pixels(512, torch.device("cuda")) == 512


@pytest.mark.parametrize(
    ("model", "dense", "key", "expected"),
    [
        ({"method": "mamol"}, {"crop_size": 33}, "training.dense.crop_size", "a multiple of the model's window_size (2)"),
        ({"method": "baseline", "params": {"window_size": 4}}, {"crop_size": 32, "context": 6},
         "training.dense.context", "a multiple of the model's window_size (4)"),
    ],
)
def test_dense_crops_must_be_whole_windows(tmp_path: Path, model, dense, key: str, expected: str) -> None:
    data = minimal()
    data["model"], data["training"] = model, {"dense": dense}
    with pytest.raises(CatalogError) as err:
        load_catalog(write(tmp_path, data))
    assert str(err.value).startswith(f"{tmp_path / 'cat.yaml'}: {key}: expected {expected}")
    data["training"] = {"dense": {"crop_size": 48, "context": 8}}
    assert load_catalog(write(tmp_path, data)).training.dense.crop_size == 48


@pytest.mark.parametrize(
    ("params", "key", "expected"),
    [
        ({"lora_rnak": 4}, "model.params.lora_rnak", "a parameter of mamol"),
        ({"lora_rank": "eight"}, "model.params.lora_rank", "a number"),
        ({"use_dynamic": 1}, "model.params.use_dynamic", "true or false"),
        ({"expert_layers": 3}, "model.params.expert_layers", "a string"),
        ({"text_preset": ["a", "b"]}, "model.params.text_preset", "a number, a string"),  # lvpcnet's key, not a list
        # values the model would refuse only when built, after the scene is read (models.params rules)
        ({"window_size": 3}, "model.params.window_size", "an even number of pixels >= 2, found 3"),
        ({"window_size": 0}, "model.params.window_size", "an even number of pixels >= 2, found 0"),
        ({"local_kernel": 4}, "model.params.local_kernel", "0 or an odd number of pixels, found 4"),
        ({"local_kernel": 2.5}, "model.params.local_kernel", "0 or an odd number of pixels, found 2.5"),
        ({"dense_readout": "centre"}, "model.params.dense_readout", "one of patch_mean, pixel, found 'centre'"),
        ({"missing_tokens": "nan"}, "model.params.missing_tokens", "one of zero, dummy, found 'nan'"),
    ],
)
def test_model_params_are_checked_against_the_registered_methods(tmp_path: Path, params, key: str, expected: str) -> None:
    data = minimal()
    data["model"] = {"method": "mamol", "params": params}
    with pytest.raises(CatalogError) as err:
        load_catalog(write(tmp_path, data))
    assert str(err.value).startswith(f"{tmp_path / 'cat.yaml'}: {key}: expected {expected}")


def test_valid_dense_geometry_params_load(tmp_path: Path) -> None:
    data = minimal()
    data["model"] = {"method": "mamol", "params": {"window_size": 2, "local_kernel": 5, "dense_readout": "pixel"}}
    assert load_catalog(write(tmp_path, data)).model.params["local_kernel"] == 5


def test_model_params_of_another_method_are_accepted(tmp_path: Path) -> None:
    data = minimal()
    data["model"] = {"method": "mamol", "params": {"lora_rank": 4, "mask_prob": 0.3, "text_seed": 1, "lora_alpha": 8.0}}
    assert load_catalog(write(tmp_path, data)).model.params["mask_prob"] == 0.3


def test_an_unknown_method_is_a_catalog_error(tmp_path: Path) -> None:
    data = minimal()
    data["model"] = {"method": "mamoll"}
    with pytest.raises(CatalogError, match=r": model\.method: expected a registered method"):
        load_catalog(write(tmp_path, data))


BOMB = """
a: &a [x, x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
"""


def test_a_yaml_alias_bomb_is_refused(tmp_path: Path) -> None:
    """10^7 leaves from a few lines: refused before anything walks or serialises them."""
    path = tmp_path / "cat.yaml"
    path.write_text(BOMB + yaml.safe_dump(minimal()))
    with pytest.raises(CatalogError, match=r": \(top level\): expected at most 200000 values"):
        load_catalog(path)


def test_an_alias_bomb_under_model_params_is_refused(tmp_path: Path) -> None:
    """A few thousand values under another method's key would be written into every checkpoint's config.json."""
    text = yaml.safe_dump(minimal()) + "model:\n  method: mamol\n  params:\n    text_preset: " + \
        "&a [x, x, x, x, x, x, x, x, x, x]\n    mask_prob: [" + ", ".join(["*a"] * 200) + "]\n"
    path = tmp_path / "cat.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError, match=r": model\.params: expected at most 1000 values"):
        load_catalog(path)


def test_a_scene_level_error_names_the_scene_without_dumping_it(tmp_path: Path) -> None:
    data = minimal()
    data["scenes"][0]["grid"] = {"from_modality": "nope"}
    with pytest.raises(CatalogError) as err:
        load_catalog(write(tmp_path, data))
    message = str(err.value)
    assert ": scenes['s']: expected grid.from_modality 'nope'" in message
    assert "found" not in message and "modalities" not in message.split("expected")[0]
