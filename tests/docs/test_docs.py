"""The documentation stays true to the code: every catalog key documented, the example catalog
valid, every relative link resolving, every documented command-line option real."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from pipeline.config import catalog as catalog_module
from pipeline.config.catalog import parse_catalog

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# section model -> the heading of its table in docs/catalog.md
SECTIONS = {
    "Catalog": "Top level", "Scene": "`scenes[]`", "Modality": "`scenes[].modalities[]`",
    "Source": "`source`", "Georeference": "`georeference`", "Grid": "`scenes[].grid`",
    "Availability": "`scenes[].availability`", "CloudMask": "`clouds[]`", "SensorFailure": "`failures[]`",
    "Labels": "`scenes[].labels`", "ClassInfo": "`classes[]`", "Model": "`model`", "Pretrain": "`model.pretrain`",
    "Training": "`training`", "Protocol": "`training.protocol`", "DenseCrops": "`training.dense`", "Output": "`output`", "Cluster": "`cluster`",
    "Storage": "`storage`",
}


def section_models() -> dict[str, type[BaseModel]]:
    return {name: obj for name, obj in vars(catalog_module).items()
            if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == catalog_module.__name__
            and not name.startswith("_")}


def doc_sections(text: str) -> dict[str, str]:
    """Heading text (after the #'s, up to the first space-separated word group) -> body until the next heading."""
    parts = re.split(r"^#{2,4} (.+)$", text, flags=re.MULTILINE)
    return {parts[i].split(" (")[0].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_section_model_has_a_documented_table() -> None:
    assert set(section_models()) == set(SECTIONS), "a catalog section was added or renamed: document it in docs/catalog.md"


@pytest.mark.parametrize("model_name", sorted(SECTIONS))
def test_every_catalog_key_is_documented(model_name: str) -> None:
    sections = doc_sections((DOCS / "catalog.md").read_text())
    heading = SECTIONS[model_name]
    assert heading in sections, f"docs/catalog.md has no heading {heading!r}"
    body = sections[heading]
    model = section_models()[model_name]
    keys = [name for name, field in model.model_fields.items() if not field.exclude]
    missing = [k for k in keys if not re.search(rf"^\| `{re.escape(k)}`", body, flags=re.MULTILINE)]
    assert not missing, f"docs/catalog.md, {heading}: no row for {missing}"


def test_the_reference_example_is_a_valid_catalog() -> None:
    text = (DOCS / "catalog.md").read_text()
    example = re.search(r"## A complete example\s+```yaml\n(.*?)```", text, flags=re.DOTALL)
    assert example, "docs/catalog.md lost its example"
    catalog = parse_catalog(yaml.safe_load(example.group(1)), DOCS / "example.yaml")
    assert [m.name for m in catalog.scenes[0].modalities] == ["hs", "lidar", "sar"]
    assert catalog.scenes[0].availability.failures[1].start is not None


def test_relative_links_resolve() -> None:
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    assert len(pages) >= 8
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not re.match(r"[a-z]+://", target) and not (page.parent / target).exists():
                broken.append(f"{page.name} -> {target}")
    assert not broken


@pytest.mark.parametrize("module", ["pipeline.batch", "pipeline.run", "pipeline.evaluate", "pipeline.train", "pipeline.ingest",
                                    "pipeline.webmap"])
def test_documented_options_exist(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    with pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    help_text = capsys.readouterr().out
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *DOCS.glob("*.md")])
    documented = set()
    for line in re.findall(rf"python -m {re.escape(module)}\b[^\n|`]*", text):
        documented |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", line))
    assert documented, f"no options of {module} found in the docs"
    undefined = sorted(o for o in documented if o not in help_text)
    assert not undefined, f"{module}: documented options that do not exist: {undefined}"
