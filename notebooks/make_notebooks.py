"""Write the walkthrough notebooks (``python notebooks/make_notebooks.py``), without outputs.

The notebooks are generated from this script so they can be reviewed as code and regenerated;
``tests/notebooks/test_notebooks.py`` checks the committed files match it and runs both.
Each notebook reads its settings from environment variables in its first code cell, so the
test suite runs them headless on a small scene (``MMLC_CATALOG`` pointing at a small catalog).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

INTERACTIVE_MAPPING = [
    new_markdown_cell("""\
# Interactive land-cover mapping

Runs a catalog (the generated demo scene by default) with two methods, then shows the result on an
interactive web map (Leaflet, shipped with the package: the page works offline): the class map with
its legend, confidence and availability as switchable layers, the class and confidence of the pixel
under the pointer (and in a popup on click), and the two methods side by side.

Settings come from environment variables so the same notebook runs headless in the test suite:

| variable | default | meaning |
|---|---|---|
| `MMLC_CATALOG` | `../catalogs/demo.yaml` | the catalog to run: a file or a URL (`s3://bucket/catalog.yaml`, credentials from the environment) |
| `MMLC_OUTPUT` | `../outputs/notebooks/01` | where each method's outputs go (`<output>/<method>/<scene>/`) |
| `MMLC_METHODS` | `<catalog's model.method>,baseline` | the methods to run; the first two are compared |
| `MMLC_PROGRESS` | `1` | progress bars |"""),
    new_code_cell("""\
import os
from pathlib import Path

from pipeline.config.catalog import load_catalog

CATALOG = os.environ.get("MMLC_CATALOG", "../catalogs/demo.yaml")  # a path or a URL
OUTPUT = Path(os.environ.get("MMLC_OUTPUT", "../outputs/notebooks/01")).resolve()
PROGRESS = os.environ.get("MMLC_PROGRESS", "1") == "1"
default_method = load_catalog(CATALOG).model.method
METHODS = os.environ.get("MMLC_METHODS", f"{default_method},baseline").split(",")
METHODS = list(dict.fromkeys(METHODS))  # no method twice
print(f"catalog {CATALOG}, methods {METHODS}, outputs under {OUTPUT}")"""),
    new_markdown_cell("""\
## Run the catalog

`pipeline.run.run` ingests the scene, trains the method when the catalog names no checkpoint
(a checkpoint in the catalog is used for the catalog's own method only), maps it on Dask and
exports Cloud-Optimized GeoTIFFs, a quicklook, the web map `map.html`, a JSON report and a STAC item."""),
    new_code_cell("""\
from pipeline.outputs.report import format_summary
from pipeline.run import run

runs = {}
for method in METHODS:
    catalog = load_catalog(CATALOG)
    if method != catalog.model.method:
        catalog.model.method, catalog.model.checkpoint = method, None
    runs[method] = run(catalog, output=OUTPUT / method, progress=PROGRESS)[0]
    print(format_summary(runs[method].report))"""),
    new_code_cell("""\
from IPython.display import Image, display

first = runs[METHODS[0]]
display(Image(filename=str(first.outputs["quicklook"])))"""),
    new_markdown_cell("""\
## The map on a web map

The same page `pipeline.run` wrote as `map.html` beside the COGs (`python -m pipeline.webmap FOLDER`
writes it again). Layers (top right): the land cover (its opacity slider is under the legend), the
confidence (max softmax probability, viridis from 0 to 1) and the availability pattern (which
modalities each pixel was mapped from). Hover the map for the class, confidence and pattern of the
pixel under the pointer; click for a popup. The basemap is online only: offline, the layers lie on a
plain background and the page says the basemap could not be loaded. `pixel_info` below reads the
same values in Python."""),
    new_code_cell("""\
from pipeline.outputs.webmap import interactive_map

folder = first.outputs["landcover"].parent
web_map = interactive_map(folder)
web_map.save(str(OUTPUT / "map.html"))
web_map"""),
    new_code_cell("""\
import rasterio
from rasterio.warp import transform

from pipeline.outputs.webmap import pixel_info

with rasterio.open(folder / "landcover.tif") as src:  # the centre of the map, in degrees
    (lon,), (lat,) = transform(src.crs, "EPSG:4326", [(src.bounds.left + src.bounds.right) / 2],
                               [(src.bounds.bottom + src.bounds.top) / 2])
info = pixel_info(folder, lat, lon)
info"""),
    new_markdown_cell("""\
## Two methods side by side

Pan or zoom one pane and the other follows; each has its own layer switcher and pixel readout.
`python -m pipeline.webmap FOLDER --compare OTHER_FOLDER` writes the same page."""),
    new_code_cell("""\
from pipeline.outputs.webmap import side_by_side

left, right = METHODS[0], METHODS[min(1, len(METHODS) - 1)]
dual = side_by_side(runs[left].outputs["landcover"].parent, runs[right].outputs["landcover"].parent)
dual.save(str(OUTPUT / "side-by-side.html"))
print(f"left: {left}, right: {right}")
dual"""),
    new_code_cell("""\
%matplotlib inline
import matplotlib.pyplot as plt
from matplotlib.image import imread

fig, axes = plt.subplots(1, 2, figsize=(14, 5))
for ax, method in zip(axes, (left, right)):
    ax.imshow(imread(runs[method].outputs["quicklook"]))
    accuracy = runs[method].report.get("accuracy") or {}
    oa = accuracy.get("oa")
    ax.set_title(f"{method}: held-out OA {100 * oa:.1f} %" if oa is not None else method)
    ax.axis("off")
display(fig)  # explicit, and %matplotlib inline above: pipeline.train/evaluate switch matplotlib to Agg
plt.close(fig)"""),
]

TRAIN_AND_EVALUATE = [
    new_markdown_cell("""\
# Train and evaluate under missing modalities

Trains methods on a catalog's labels (the generated demo scene by default), then runs one of the
papers' protocols: a model per setting of train/test availability, tested on held-out pixels,
with overall accuracy (OA), average accuracy (AA), Cohen's kappa and confusion matrices.

| variable | default | meaning |
|---|---|---|
| `MMLC_CATALOG` | `../catalogs/demo.yaml` | the catalog: a file or a URL (`s3://bucket/catalog.yaml`) |
| `MMLC_OUTPUT` | `../outputs/notebooks/02` | checkpoints and tables |
| `MMLC_METHODS` | `baseline,<catalog's model.method>` | methods to train and compare |
| `MMLC_PROTOCOL` | `mamol-table1` | `mamol-table1`, `mamol-table3`, `mamol-table5`, `lvpcnet-table1` |
| `MMLC_ROWS` | `0,1,2` | rows of the protocol to run (mamol-table1: the three settings at eta 50 %); `all` for all |
| `MMLC_SEEDS` | `0` | seeds (mean and standard deviation over them) |
| `MMLC_EPOCHS` | the catalog's | training epochs |
| `MMLC_MAX_TEST_PIXELS` | `0` (every test pixel) | stratified cap on test pixels |
| `MMLC_PROGRESS` | `1` | progress bars |"""),
    new_code_cell("""\
import os
from pathlib import Path

from pipeline.config.catalog import load_catalog

CATALOG = os.environ.get("MMLC_CATALOG", "../catalogs/demo.yaml")  # a path or a URL
OUTPUT = Path(os.environ.get("MMLC_OUTPUT", "../outputs/notebooks/02")).resolve()
catalog = load_catalog(CATALOG)
METHODS = os.environ.get("MMLC_METHODS", f"baseline,{catalog.model.method}").split(",")
METHODS = list(dict.fromkeys(METHODS))
PROTOCOL = os.environ.get("MMLC_PROTOCOL", "mamol-table1")
ROWS_TEXT = os.environ.get("MMLC_ROWS", "0,1,2")
ROWS = None if ROWS_TEXT == "all" else [int(r) for r in ROWS_TEXT.split(",")]
SEEDS = [int(s) for s in os.environ.get("MMLC_SEEDS", "0").split(",")]
if "MMLC_EPOCHS" in os.environ:
    catalog.training.epochs = int(os.environ["MMLC_EPOCHS"])
MAX_TEST_PIXELS = int(os.environ.get("MMLC_MAX_TEST_PIXELS", "0")) or None  # None: every test pixel
PROGRESS = os.environ.get("MMLC_PROGRESS", "1") == "1"
print(f"{catalog.name}: methods {METHODS}, {PROTOCOL} rows {ROWS or 'all'}, seeds {SEEDS}, "
      f"{catalog.training.epochs} epochs")"""),
    new_markdown_cell("""\
## Train

One model per method on the catalog's training protocol (`training.protocol`); each checkpoint
is a safetensors file with a JSON config, a training log and a loss curve."""),
    new_code_cell("""\
from pipeline.learn.training import train

trained = {}
for method in METHODS:
    trained[method] = train(catalog, method=method, checkpoint_dir=OUTPUT / "checkpoints" / method,
                            progress=PROGRESS)
    result = trained[method]
    print(f"{method}: best validation OA {result.best_val_oa:.3f} after {len(result.history)} epochs "
          f"({result.seconds:.0f} s) -> {result.checkpoint}")"""),
    new_code_cell("""\
%matplotlib inline
import matplotlib.pyplot as plt
from IPython.display import display

fig, (loss_ax, oa_ax) = plt.subplots(1, 2, figsize=(11, 3.5))
for method, result in trained.items():
    epochs = [h["epoch"] for h in result.history]
    loss_ax.plot(epochs, [h["train_loss"] for h in result.history], marker="o", label=method)
    oa_ax.plot(epochs, [h["val_oa"] for h in result.history], marker="o", label=method)
loss_ax.set(xlabel="epoch", ylabel="training loss")
oa_ax.set(xlabel="epoch", ylabel="validation OA")
loss_ax.legend()
display(fig)  # explicit, and %matplotlib inline above: pipeline.train/evaluate switch matplotlib to Agg
plt.close(fig)"""),
    new_markdown_cell("""\
## Evaluate under missing-modality scenarios

For every row of the protocol and every method, a model is trained with that row's simulated
availability and tested on held-out pixels with the row's test availability."""),
    new_code_cell("""\
from IPython.display import Markdown, display

from pipeline.learn.evaluation import evaluate

evaluation = OUTPUT / "evaluation" / PROTOCOL
results = evaluate(catalog, PROTOCOL, METHODS, SEEDS, evaluation, max_test_pixels=MAX_TEST_PIXELS,
                   progress=PROGRESS, rows=ROWS)
display(Markdown((evaluation / "table.md").read_text()))"""),
    new_code_cell("""\
%matplotlib inline
import numpy as np

table = results["table"]
settings = results["settings"]
fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(settings)), 3.5))
labels = results["methods"]  # as evaluated: "mamol [dense]" where the catalog asks for the dense path, and the floor
width = 0.8 / len(labels)
for i, method in enumerate(labels):
    oa = [next((100 * e["oa_mean"] for e in table if e["setting"] == s and e["method"] == method), np.nan)
          for s in settings]
    ax.bar(np.arange(len(settings)) + i * width, oa, width, label=method)
ax.set_xticks(np.arange(len(settings)) + width * (len(labels) - 1) / 2, settings, fontsize=8)
ax.set(ylabel="OA (%)", ylim=(0, 100), title=f"{PROTOCOL} on {results['scene']}")
ax.legend()
display(fig)  # explicit, and %matplotlib inline above: pipeline.train/evaluate switch matplotlib to Agg
plt.close(fig)"""),
    new_markdown_cell("## Confusion matrices (rows: true class, row-normalised)"),
    new_code_cell("""\
from IPython.display import Image

for path in sorted(evaluation.glob("confusion_*.png")):
    display(Image(filename=str(path)))"""),
]

NOTEBOOKS = {
    "01_interactive_mapping.ipynb": INTERACTIVE_MAPPING,
    "02_train_and_evaluate.ipynb": TRAIN_AND_EVALUATE,
}


def build(cells: list) -> nbformat.NotebookNode:
    notebook = new_notebook(cells=cells)
    notebook.metadata.update({
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    })
    for i, cell in enumerate(notebook.cells):  # stable ids, so regenerating gives the same files
        cell["id"] = f"cell-{i:02d}"
    return notebook


def write_all(folder: Path = HERE) -> list[Path]:
    paths = []
    for name, cells in NOTEBOOKS.items():
        path = Path(folder) / name
        nbformat.write(build(cells), path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p)
