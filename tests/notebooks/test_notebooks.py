"""The walkthrough notebooks: committed without outputs, in sync with their generator, and executed
headless (nbclient) on a tiny generated demo scene with small settings."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from pipeline.datasets.demo import generate_demo_scene

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
TINY_SHAPE = (32, 64)  # 2048 pixels: mapping two methods stays well under a minute on 2 cores


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shared = _load("_shared_fixtures", ROOT / "tests" / "conftest.py")  # small_demo_dict: demo.yaml re-pointed
generator = _load("_make_notebooks", NOTEBOOKS / "make_notebooks.py")


@pytest.fixture(scope="module")
def tiny_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-demo")
    files = generate_demo_scene(folder / "data", seed=0, height=TINY_SHAPE[0], width=TINY_SHAPE[1])
    data = shared.small_demo_dict(files, folder / "unused-output", training={"samples_per_class": 20, "max_steps": 4},
                                  model={"patch_size": 3})  # 18 tokens a pixel: the notebooks, not the model, are tested
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec running this interpreter (the project's venv), found through JUPYTER_PATH."""
    spec = tmp_path / "jupyter" / "kernels" / "mmlc-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "mmlandcover tests", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MMLC_PROGRESS", "0")
    monkeypatch.setenv("PYTHONWARNINGS", "ignore::DeprecationWarning")
    return "mmlc-test"


def execute(name: str, kernel_name: str, monkeypatch: pytest.MonkeyPatch, catalog: Path, output: Path,
            **settings: str) -> nbformat.NotebookNode:
    """Run a notebook on ``catalog`` into ``output``; ``settings`` become its ``MMLC_<NAME>`` variables."""
    from nbclient import NotebookClient

    for key, value in {"catalog": str(catalog), "output": str(output), **settings}.items():
        monkeypatch.setenv(f"MMLC_{key.upper()}", value)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, kernel_name=kernel_name, timeout=600,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return notebook


def outputs_of(notebook: nbformat.NotebookNode, mime: str) -> list[str]:
    return [out["data"][mime] for cell in notebook.cells if cell.cell_type == "code"
            for out in cell.outputs if "data" in out and mime in out["data"]]


@pytest.mark.parametrize("name", sorted(generator.NOTEBOOKS))
def test_committed_notebooks_have_no_outputs(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code, "a notebook without code"
    assert all(c.outputs == [] and c.execution_count is None for c in code), f"{name} has saved outputs: strip them"


def test_committed_notebooks_match_their_generator(tmp_path: Path) -> None:
    for path in generator.write_all(tmp_path):
        assert path.read_text() == (NOTEBOOKS / path.name).read_text(), \
            f"{path.name} differs from notebooks/make_notebooks.py: run `python notebooks/make_notebooks.py`"


@pytest.mark.slow
def test_interactive_mapping_notebook_runs(tiny_catalog: Path, kernel: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = execute("01_interactive_mapping.ipynb", kernel, monkeypatch, tiny_catalog, tmp_path / "out",
                       methods="mamol,baseline")

    html = outputs_of(notebook, "text/html")
    assert len(html) >= 2, "the web map and the side-by-side map are displayed"
    assert len(outputs_of(notebook, "image/png")) >= 2, "the quicklook and the two-method figure are shown"
    web_map = (tmp_path / "out" / "map.html").read_text()
    classes = yaml.safe_load(tiny_catalog.read_text())["scenes"][0]["labels"]["classes"]
    for c in classes:  # the legend names every class, with its colour
        assert c["name"] in web_map and c["color"].lower() in web_map.lower()
    for layer in ("land cover", "confidence (0 to 1, viridis)", "availability pattern"):
        assert layer in web_map
    assert web_map == (tmp_path / "out" / "mamol" / "demo" / "map.html").read_text(), "the page pipeline.run wrote"
    dual = (tmp_path / "out" / "side-by-side.html").read_text()
    assert '"title":"mamol/demo"' in dual and '"title":"baseline/demo"' in dual
    info = outputs_of(notebook, "text/plain")
    assert any("'inside': True" in text and "'class_name':" in text for text in info), "pixel_info at the centre"
    for method in ("mamol", "baseline"):
        assert (tmp_path / "out" / method / "demo" / "landcover.tif").is_file()


@pytest.mark.slow
def test_train_and_evaluate_notebook_runs(tiny_catalog: Path, kernel: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = execute("02_train_and_evaluate.ipynb", kernel, monkeypatch, tiny_catalog, tmp_path / "out",
                       methods="baseline,mamol", rows="0", epochs="1", max_test_pixels="300")

    markdown = outputs_of(notebook, "text/markdown")
    assert len(markdown) == 1
    table = markdown[0]
    # the demo catalog asks for the dense path, which both methods have
    assert "baseline [dense] OA" in table and "mamol [dense] OA" in table and "eta 50%" in table
    evaluation = tmp_path / "out" / "evaluation" / "mamol-table1"
    results = json.loads((evaluation / "results.json").read_text())
    assert {r["method"] for r in results["runs"]} == {"baseline [dense]", "mamol [dense]", "random forest (floor)"}
    for r in results["table"]:  # the notebook shows the evaluation's own numbers
        assert f"{100 * r['oa_mean']:.2f}" in table
    confusion = sorted(evaluation.glob("confusion_*.png"))
    assert len(confusion) == 3  # baseline, mamol and the random-forest floor
    assert len(outputs_of(notebook, "image/png")) >= 2 + 2, "curves, OA bars and two confusion images"
    for method in ("baseline", "mamol"):
        assert (tmp_path / "out" / "checkpoints" / method / "model.safetensors").is_file()
