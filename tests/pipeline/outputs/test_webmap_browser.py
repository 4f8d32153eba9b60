"""map.html in a real browser: headless Chromium, opened from file:// with the network disabled.

Chromium and chromedriver are Debian's (``tests/install_browser.sh`` installs them where missing,
as root with apt-get; elsewhere these tests skip with the reason). The page is driven with
selenium through the system chromedriver (no driver download).

``MMLC_WEBMAP_SCREENSHOT=docs/images/webmap.png`` keeps the screenshot of the colour test
(the picture in docs/outputs.md is made so).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import Transformer
from scipy import ndimage

from pipeline.outputs.webmap import write_web_map

ROOT = Path(__file__).resolve().parents[3]
WINDOW = (1000, 700)
# Chromium flags that work headless as root in a container; the last two cut the network off.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", f"--window-size={WINDOW[0]},{WINDOW[1]}", "--force-device-scale-factor=1",
                  "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"]


def _browser_binaries() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing Debian's packages where missing (else skip)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        result = subprocess.run(["sh", str(ROOT / "tests" / "install_browser.sh")], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"no headless Chromium: {result.stderr.strip()}")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver
    return chromium, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra: pip install -e .[test]")
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _browser_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, read by the tests
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def exported(make_exported_run, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("webmap-browser") / "baseline" / "test-scene"  # the page's title: baseline/test-scene
    folder.mkdir(parents=True)
    return folder, make_exported_run(folder, height=100, width=150)


def open_page(driver, path: Path) -> None:
    """Load ``path`` from file:// and wait until every shown overlay image is drawn (the console log starts afresh)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")
    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return !!window.mmlcWebmap && mmlcWebmap.ready()"))


def lonlat(transform, row, col, crs: str = "EPSG:32632") -> tuple:
    """Longitude and latitude of a (fractional) pixel position of a grid (scalars or arrays)."""
    x, y = transform * (col, row)
    return Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)


def screen_point(driver, pane: int, lat: float, lon: float) -> tuple[float, float]:
    """Viewport position (CSS px) of a point of pane ``pane``'s map."""
    return tuple(driver.execute_script(
        "const m = mmlcWebmap.maps[arguments[0]], p = m.latLngToContainerPoint([arguments[1], arguments[2]]);"
        "const r = m.getContainer().getBoundingClientRect(); return [r.left + p.x, r.top + p.y];", pane, lat, lon))


def test_offline_map_draws_the_class_colours_where_the_classes_are(browser, exported, tmp_path: Path) -> None:
    folder, store = exported
    page = write_web_map(folder)
    open_page(browser, page)
    shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB"))
    assert browser.execute_script("return window.devicePixelRatio") == 1, "screenshot pixels are CSS pixels"
    with rasterio.open(folder / "landcover.tif") as src:
        table, names, classes = src.colormap(1), src.tags(1), src.read(1)
    drawn = []
    for value in np.unique(classes[classes > 0]):
        # a pixel well inside a region of this class, so the warp's nearest sampling cannot reach another class
        inside = ndimage.binary_erosion(classes == value, np.ones((7, 7), bool))
        rows, cols = np.nonzero(inside)
        if not rows.size:
            continue
        row, col = rows[rows.size // 2], cols[rows.size // 2]
        lon, lat = lonlat(src.transform, row + 0.5, col + 0.5)
        x, y = screen_point(browser, 0, lat, lon)
        assert 0 <= x < shot.shape[1] and 0 <= y < shot.shape[0], "the map's extent is in view"
        pixel = shot[int(y), int(x)].astype(int)
        expected = np.array(table[int(value)][:3])
        assert np.abs(pixel - expected).max() <= 2, f"class {value} at ({row}, {col}): drawn {pixel}, colour table {expected}"
        drawn.append(int(value))
    assert len(drawn) >= 3
    legend = browser.find_element("css selector", ".mmlc-legend").text
    for value in drawn:
        assert names[f"class_{value}"] in legend
    note = browser.find_element("css selector", ".mmlc-note")  # the basemap failed (no network): the page says so
    assert note.is_displayed() and "basemap could not be loaded" in note.text
    # no script error, and the only loads that failed (the network is off) are basemap tiles
    problems = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert problems and all(m.startswith("https://tile.openstreetmap.org/") for m in problems), problems
    if os.environ.get("MMLC_WEBMAP_SCREENSHOT"):
        Image.fromarray(shot).save(os.environ["MMLC_WEBMAP_SCREENSHOT"], optimize=True)


def test_click_and_hover_read_the_class_and_confidence_of_the_pixel(browser, exported) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.support.ui import WebDriverWait

    folder, store = exported
    open_page(browser, write_web_map(folder))
    with rasterio.open(folder / "landcover.tif") as src:
        classes, names, transform = src.read(1), src.tags(1), src.transform
    with rasterio.open(folder / "confidence.tif") as src:
        confidence = src.read(1)
    for row, col in [(60, 120), (30, 100), (99, 40)]:
        lon, lat = lonlat(transform, row + 0.5, col + 0.5)
        x, y = screen_point(browser, 0, lat, lon)
        hover = ActionBuilder(browser)
        hover.pointer_action.move_to_location(round(x), round(y))
        hover.perform()
        hovered = browser.find_element("css selector", ".mmlc-hover").text
        click = ActionBuilder(browser)
        click.pointer_action.move_to_location(round(x), round(y)).click()
        click.perform()
        popup = WebDriverWait(browser, 5).until(  # shown once its fade-in has started
            lambda d: d.find_element("css selector", ".mmlc-popup .mmlc-pixel").text or None)
        expected = [names[f"class_{classes[row, col]}"], f"confidence {confidence[row, col]:.3f}"]
        assert popup.splitlines()[:2] == expected, f"pixel ({row}, {col})"
        assert hovered.splitlines()[:2] == expected
        ActionChains(browser).send_keys("\ue00c").perform()  # Escape: close the popup before the next click


@pytest.mark.parametrize("crs", ["EPSG:32632", "EPSG:4326"])
def test_the_lookup_matches_the_cog_on_every_sampled_pixel(browser, exported, make_exported_run, tmp_path: Path,
                                                           crs: str) -> None:
    folder, _ = exported
    if crs == "EPSG:4326":  # degrees: pixels 1e-4 degrees a side, taller than wide on the ground
        folder = tmp_path
        make_exported_run(folder, height=60, width=80, resolution=1e-4, crs=crs, origin=(11.0, 46.1))
    open_page(browser, write_web_map(folder))
    with rasterio.open(folder / "landcover.tif") as src:
        classes, transform = src.read(1), src.transform
        assert src.crs == crs
    with rasterio.open(folder / "confidence.tif") as src:
        confidence = src.read(1)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, classes.shape[0], 300), rng.integers(0, classes.shape[1], 300)
    lons, lats = lonlat(transform, rows + 0.5, cols + 0.5, crs)
    found = browser.execute_script(
        "return arguments[0].map((p) => mmlcWebmap.lookup(0, p[0], p[1]));", np.c_[lats, lons].tolist())
    assert [f["value"] for f in found] == classes[rows, cols].tolist()
    got = np.array([np.nan if f["confidence"] is None else f["confidence"] for f in found])
    np.testing.assert_allclose(got, confidence[rows, cols], atol=1e-4)  # NaN (nodata) where the COG has NaN


def test_side_by_side_panes_follow_each_other(browser, exported, tmp_path: Path) -> None:
    folder, _ = exported
    page = write_web_map(folder, tmp_path / "compare.html", compare=folder)
    open_page(browser, page)
    assert len(browser.find_elements("css selector", ".mmlc-pane")) == 2
    before, zoom_a, zoom_b, apart = browser.execute_script(
        "const [a, b] = mmlcWebmap.maps, before = b.getZoom();"
        "a.setZoom(a.getZoom() + 1, {animate: false}); a.panBy([40, 30], {animate: false});"
        "return [before, a.getZoom(), b.getZoom(), a.project(a.getCenter()).distanceTo(b.project(b.getCenter()))];")
    assert zoom_a == zoom_b == before + 1
    assert apart < 1.0, "the right pane's centre is within a screen pixel of the left's"
