/* mmlandcover web map: the page's behaviour (pipeline/outputs/webmap.py inlines it with Leaflet).
 *
 * Reads the JSON in #mmlc-data: one pane per run (overlays as PNG data URIs, legend, pixel lookup)
 * and the basemap. Draws each pane as a Leaflet map; panes follow each other's view. Nothing here
 * needs the network: only the basemap tiles do, and their failure shows a note, nothing more.
 * window.mmlcWebmap exposes the maps and the lookup (used by the browser tests; handy in a console).
 */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("mmlc-data").textContent);

  function bytes(base64) {
    var text = atob(base64), out = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }

  /* A function latlng -> {class, value, confidence, pattern, row, col} (null outside the map). */
  function makeLookup(grid) {
    var classes = bytes(grid.classes), confidence = bytes(grid.confidence);
    var patterns = grid.patterns ? bytes(grid.patterns) : null, m = grid.mesh, n = m.n;
    function bilinear(a, i, j, tx, ty) {
      return (1 - ty) * ((1 - tx) * a[j * n + i] + tx * a[j * n + i + 1]) +
        ty * ((1 - tx) * a[(j + 1) * n + i] + tx * a[(j + 1) * n + i + 1]);
    }
    return function (latlng) {
      var p = L.CRS.EPSG3857.project(L.latLng(latlng));
      var fx = (p.x - m.west) / m.dx, fy = (m.north - p.y) / m.dy;
      if (!(fx >= 0 && fy >= 0 && fx <= n - 1 && fy <= n - 1)) return null;
      var i = Math.min(Math.floor(fx), n - 2), j = Math.min(Math.floor(fy), n - 2);
      var col = Math.floor(bilinear(m.cols, i, j, fx - i, fy - j));
      var row = Math.floor(bilinear(m.rows, i, j, fx - i, fy - j));
      if (col < 0 || row < 0 || col >= grid.width || row >= grid.height) return null;
      var k = row * grid.width + col, value = classes[k];
      var coded = confidence[2 * k] | (confidence[2 * k + 1] << 8);
      return {
        row: row, col: col, step: grid.step, value: value,
        "class": value in grid.class_names ? grid.class_names[value] : "no data",
        confidence: coded === 0 ? null : (coded - 1) / 65534,
        pattern: patterns ? (patterns[k] in grid.pattern_names ? grid.pattern_names[patterns[k]] : "none") : null
      };
    };
  }

  function element(tag, className, text) {
    var node = L.DomUtil.create(tag, className);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function describe(info) {
    var box = element("div", "mmlc-pixel");
    if (!info) {
      box.appendChild(element("span", "mmlc-outside", "outside the map"));
      return box;
    }
    box.appendChild(element("b", "mmlc-class", info["class"]));
    box.appendChild(element("div", "mmlc-confidence",
      "confidence " + (info.confidence === null ? "n/a" : info.confidence.toFixed(3))));
    if (info.pattern !== null) box.appendChild(element("div", "mmlc-pattern", "available: " + info.pattern));
    if (info.step > 1) box.appendChild(element("div", "mmlc-step", "(block of " + info.step.toFixed(1) + " px a side)"));
    return box;
  }

  function control(position, build) {
    var c = L.control({position: position});
    c.onAdd = function () {
      var div = build();
      L.DomEvent.disableClickPropagation(div);
      L.DomEvent.disableScrollPropagation(div);
      return div;
    };
    return c;
  }

  function legend(pane, landCover) {
    return control("bottomleft", function () {
      var div = element("div", "mmlc-legend");
      div.appendChild(element("b", "mmlc-legend-title", "Land cover"));
      pane.legend.forEach(function (entry) {
        var row = element("div", "mmlc-legend-row");
        var swatch = element("span", "mmlc-swatch");
        swatch.style.background = entry.color;
        row.appendChild(swatch);
        row.appendChild(element("span", "mmlc-legend-name", entry.name));
        div.appendChild(row);
      });
      if (landCover) {
        var label = element("label", "mmlc-opacity", "opacity ");
        var slider = element("input");
        slider.type = "range"; slider.min = 0; slider.max = 100; slider.value = 100 * landCover.options.opacity;
        slider.addEventListener("input", function () { landCover.setOpacity(slider.value / 100); });
        label.appendChild(slider);
        div.appendChild(label);
      }
      return div;
    });
  }

  /* The pane's frame: every frame is in the page before any map is made, so each map knows its final size. */
  function makeFrame(pane, container) {
    var holder = element("div", "mmlc-pane");
    container.appendChild(holder);
    holder.appendChild(element("div", "mmlc-title", pane.title));
    var mapDiv = element("div", "mmlc-map");
    holder.appendChild(mapDiv);
    return mapDiv;
  }

  function makePane(pane, mapDiv) {
    var map = L.map(mapDiv, {zoomSnap: 0.25, maxZoom: 24});
    var basemap = L.tileLayer(data.basemap.url, {
      maxNativeZoom: data.basemap.max_native_zoom, maxZoom: 24, attribution: data.basemap.attribution
    });
    var plain = L.layerGroup();
    var note = control("topleft", function () {
      return element("div", "mmlc-note", "The basemap could not be loaded (offline?): the map layers do not need it.");
    });
    var tileLoaded = false, noted = false;
    basemap.on("tileload", function () { tileLoaded = true; if (noted) { note.remove(); noted = false; } });
    basemap.on("tileerror", function () { if (!tileLoaded && !noted) { note.addTo(map); noted = true; } });
    basemap.addTo(map);

    var overlays = {}, pending = 0, landCover = null;
    var state = {map: map, ready: false, lookup: makeLookup(pane.lookup)};
    pane.layers.forEach(function (layer, index) {
      var overlay = L.imageOverlay(layer.image, layer.bounds,
        {opacity: layer.opacity, className: "mmlc-raster", interactive: false, zIndex: index + 1});
      overlays[layer.name] = overlay;
      if (index === 0) landCover = overlay;
      if (layer.show) {
        pending++;
        overlay.once("load error", function () { if (--pending === 0) state.ready = true; });
        overlay.addTo(map);
      }
    });
    if (pending === 0) state.ready = true;
    var baseLayers = {};
    baseLayers[data.basemap.name] = basemap;
    baseLayers["plain background"] = plain;
    L.control.layers(baseLayers, overlays, {collapsed: data.panes.length > 1}).addTo(map);
    L.control.scale().addTo(map);
    legend(pane, landCover).addTo(map);

    var hover = element("div", "mmlc-hover", "hover the map for class and confidence");
    control("bottomright", function () { return hover; }).addTo(map);
    map.on("mousemove", function (e) {
      hover.textContent = "";
      hover.appendChild(describe(state.lookup(e.latlng)));
    });
    map.on("mouseout", function () { hover.textContent = "hover the map for class and confidence"; });
    map.on("click", function (e) {
      L.popup({className: "mmlc-popup"}).setLatLng(e.latlng).setContent(describe(state.lookup(e.latlng))).openOn(map);
    });
    map.fitBounds(pane.bounds, {animate: false});
    return state;
  }

  /* Panes show the same view: the first pane's to start with, then whichever pane moved. */
  function synchronise(maps) {
    var moving = false;
    maps.slice(1).forEach(function (other) { other.setView(maps[0].getCenter(), maps[0].getZoom(), {animate: false}); });
    maps.forEach(function (source) {
      source.on("move", function () {
        if (moving) return;
        moving = true;
        maps.forEach(function (other) {
          if (other !== source) other.setView(source.getCenter(), source.getZoom(), {animate: false});
        });
        moving = false;
      });
    });
  }

  var container = document.getElementById("mmlc-panes");
  container.className = "mmlc-panes-" + data.panes.length;
  var frames = data.panes.map(function (pane) { return makeFrame(pane, container); });
  var panes = data.panes.map(function (pane, i) { return makePane(pane, frames[i]); });
  var maps = panes.map(function (p) { return p.map; });
  if (maps.length > 1) synchronise(maps);

  window.mmlcWebmap = {
    maps: maps,
    ready: function () { return panes.every(function (p) { return p.ready; }); },
    lookup: function (index, lat, lon) { return panes[index].lookup([lat, lon]); }
  };
})();
