// The slide viewer: OpenSeadragon over the server's Deep Zoom tiles, the model's map as a canvas overlay with one
// pixel per tile (the heatmap PNG's colours), the tile under the pointer, and regions measured by the server.
"use strict";

const $ = (id) => document.getElementById(id);
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const state = { name: null, map: null, grid: null, hidden: new Set(), mode: null, points: [], polygon: null };

function apiKey() {
  return $("api-key").value || localStorage.getItem("histoclass-api-key") || "";
}

function headers() {
  return apiKey() ? { "X-API-Key": apiKey() } : {};
}

async function api(path, options = {}) {
  const reply = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!reply.ok) {
    const body = await reply.json().catch(() => ({}));
    throw new Error(body.detail || reply.statusText);
  }
  return reply;
}

function slidePath(name) {
  return "/api/slides/" + name.split("/").map(encodeURIComponent).join("/");
}

const viewer = OpenSeadragon({
  id: "viewer",
  prefixUrl: "/static/openseadragon/images/",
  showNavigator: true,
  maxZoomPixelRatio: 2,
  loadTilesWithAjax: true,
  ajaxHeaders: headers(),
  gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: false },
});

function viridis(p) {
  const x = Math.min(Math.max(p, 0), 1) * (VIRIDIS.length - 1);
  const k = Math.min(Math.floor(x), VIRIDIS.length - 2);
  const t = x - k;
  return VIRIDIS[k].map((c, i) => Math.round(c + t * (VIRIDIS[k + 1][i] - c)));
}

// -- the map -------------------------------------------------------------------------------------------------

function buildGrid(map) {
  const xs = map.tiles.map((t) => t[0]);
  const ys = map.tiles.map((t) => t[1]);
  const x0 = Math.min(...xs);
  const y0 = Math.min(...ys);
  const cols = Math.round((Math.max(...xs) - x0) / map.step) + 1;
  const rows = Math.round((Math.max(...ys) - y0) / map.step) + 1;
  const cells = new Map(map.tiles.map((t) => [`${Math.round((t[0] - x0) / map.step)},${Math.round((t[1] - y0) / map.step)}`, t]));
  return { x0, y0, cols, rows, cells };
}

function paint() {
  const { map, grid } = state;
  if (!map || !grid || !state.canvas) return;
  const layer = $("layer").value;
  const context = state.canvas.getContext("2d");
  const image = context.createImageData(grid.cols, grid.rows);
  for (const [key, tile] of grid.cells) {
    const [cx, cy] = key.split(",").map(Number);
    const probs = tile[5];
    let colour = null;
    if (layer === "argmax") {
      const best = probs.indexOf(Math.max(...probs));
      if (!state.hidden.has(map.labels[best])) colour = map.colours[best];
    } else {
      colour = viridis(probs[map.labels.indexOf(layer)]);
    }
    if (!colour) continue;
    const at = 4 * (cy * grid.cols + cx);
    image.data.set([...colour, 255], at);
  }
  context.putImageData(image, 0, 0);
  state.canvas.style.opacity = $("opacity").value;
  legend();
}

function legend() {
  const { map } = state;
  const layer = $("layer").value;
  if (layer === "argmax") {
    $("legend").innerHTML = map.labels.map((label, k) => `<label><input type="checkbox" data-class="${label}"
      ${state.hidden.has(label) ? "" : "checked"}> <span class="swatch" style="background:rgb(${map.colours[k]})"></span>${label}</label>`).join("");
    $("legend").querySelectorAll("input").forEach((box) => box.addEventListener("change", () => {
      box.checked ? state.hidden.delete(box.dataset.class) : state.hidden.add(box.dataset.class);
      paint();
    }));
  } else {
    const stops = [0, 0.5, 1].map((p) => `<span class="swatch" style="background:rgb(${viridis(p)})"></span>${p.toFixed(1)}`);
    $("legend").innerHTML = `<div class="muted">P(${layer}): ${stops.join(" ")}</div>`;
  }
}

function showMap(map) {
  state.map = map;
  state.grid = buildGrid(map);
  const { x0, y0, cols, rows } = state.grid;
  $("layer").innerHTML = `<option value="argmax">predicted class</option>` +
    map.labels.map((label) => `<option value="${label}">P(${label})</option>`).join("");
  if (state.canvas) viewer.removeOverlay(state.canvas);
  state.canvas = Object.assign(document.createElement("canvas"), { width: cols, height: rows, className: "map-overlay" });
  const rect = viewer.world.getItemAt(0).imageToViewportRectangle(x0, y0, cols * map.step, rows * map.step);
  viewer.addOverlay({ element: state.canvas, location: rect });
  paint();
  document.body.dataset.map = "shown";
}

async function loadMap(name) {
  let answer = await (await api(`${slidePath(name)}/map`)).json();
  if (answer.status === "none") answer = await (await api(`${slidePath(name)}/map`, { method: "POST" })).json();
  while (answer.status === "running" && state.name === name) {
    $("map-status").textContent = `mapping with the model… ${answer.tiles_done || 0} tiles`;
    await new Promise((done) => setTimeout(done, 1000));
    answer = await (await api(`${slidePath(name)}/map`)).json();
  }
  if (state.name !== name) return;
  if (answer.status === "failed") {
    $("map-status").textContent = `the map failed: ${answer.error}`;
    return;
  }
  $("map-status").textContent = `${answer.tiles.length} tissue tiles mapped`;
  showMap(answer);
}

// -- the tile under the pointer ------------------------------------------------------------------------------

function tileAt(x, y) {
  const { grid, map } = state;
  if (!grid) return null;
  const cx = Math.floor((x - grid.x0) / map.step);
  const cy = Math.floor((y - grid.y0) / map.step);
  return grid.cells.get(`${cx},${cy}`) || null;
}

function showTile(tile) {
  const hover = $("hover");
  if (!tile) {
    hover.innerHTML = "no tissue tile here";
    delete hover.dataset.label;
    return;
  }
  const { labels } = state.map;
  const probs = tile[5];
  const best = probs.indexOf(Math.max(...probs));
  const rows = labels.map((label, k) => `<tr><td>${label}</td><td>${probs[k].toFixed(3)}</td></tr>`).join("");
  const set = tile[6] ? `<div>prediction set: ${tile[6].join(" or ") || "—"}</div>` : "";
  const shift = tile[7] ? `<div class="${tile[7][1] ? "shift" : ""}">shift score ${tile[7][0].toFixed(3)}${
    tile[7][1] ? ": unlike the training images" : ""}</div>` : "";
  hover.innerHTML = `<strong>${labels[best]}</strong> <span class="muted">tile ${tile[0]}, ${tile[1]} · tissue ${(100 * tile[4]).toFixed(0)}%</span>
    <table>${rows}</table>${set}${shift}`;
  hover.dataset.label = labels[best];
  hover.dataset.tile = `${tile[0]},${tile[1]}`;
}

function imagePoint(position) {
  return viewer.viewport.viewportToImageCoordinates(viewer.viewport.pointFromPixel(position));
}

// -- regions ---------------------------------------------------------------------------------------------------

function drawOutline(points) {
  const item = viewer.world.getItemAt(0);
  const size = item.getContentSize();
  if (!state.polygon) {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "region-overlay");
    svg.setAttribute("viewBox", `0 0 ${size.x} ${size.y}`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.appendChild(document.createElementNS("http://www.w3.org/2000/svg", "polygon"));
    viewer.addOverlay({ element: svg, location: item.imageToViewportRectangle(0, 0, size.x, size.y) });
    state.polygon = svg;
  }
  state.polygon.firstChild.setAttribute("points", points.map((p) => `${p[0]},${p[1]}`).join(" "));
}

async function measure(points) {
  state.points = points;
  drawOutline(points);
  const reply = await api(`${slidePath(state.name)}/region`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ polygon: points }),
  });
  const summary = await reply.json();
  const area = summary.tissue_area_mm2 != null ? `${summary.tissue_area_mm2.toFixed(3)} mm²` : `${Math.round(summary.tissue_area_px)} px²`;
  const rows = Object.entries(summary.classes).map(([label, c]) =>
    `<tr data-class="${label}"><td>${label}</td><td>${c.tiles}</td><td>${(100 * c.share).toFixed(1)}%</td></tr>`).join("");
  $("region").innerHTML = `<div><strong>${summary.tiles}</strong> tiles · tissue ${area}</div><table>${rows}</table>`;
  $("region").dataset.tiles = summary.tiles;
  $("export").disabled = false;
  return summary;
}

async function exportRegion() {
  const reply = await api(`${slidePath(state.name)}/region?format=geojson`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ polygon: state.points }),
  });
  const link = Object.assign(document.createElement("a"), {
    href: URL.createObjectURL(await reply.blob()), download: `${state.name.replace(/\W+/g, "_")}-region.geojson`,
  });
  link.click();
}

function setMode(mode) {
  state.mode = state.mode === mode ? null : mode;
  state.points = [];
  $("draw-rect").classList.toggle("active", state.mode === "rect");
  $("draw-poly").classList.toggle("active", state.mode === "poly");
  viewer.setMouseNavEnabled(state.mode === null);
}

new OpenSeadragon.MouseTracker({
  element: viewer.canvas,
  moveHandler: (event) => {
    if (!state.map) return;
    const point = imagePoint(event.position);
    showTile(tileAt(point.x, point.y));
  },
  pressHandler: (event) => {
    if (state.mode !== "rect") return;
    const p = imagePoint(event.position);
    state.start = [p.x, p.y];
  },
  dragHandler: (event) => {
    if (state.mode !== "rect" || !state.start) return;
    const p = imagePoint(event.position);
    const [x, y] = state.start;
    drawOutline([[x, y], [p.x, y], [p.x, p.y], [x, p.y]]);
    state.end = [p.x, p.y];
  },
  releaseHandler: () => {
    if (state.mode !== "rect" || !state.start || !state.end) return;
    const [x, y] = state.start;
    const [u, v] = state.end;
    state.start = state.end = null;
    setMode("rect");
    measure([[x, y], [u, y], [u, v], [x, v]]);
  },
  clickHandler: (event) => {
    if (state.mode !== "poly") return;
    const p = imagePoint(event.position);
    state.points.push([p.x, p.y]);
    drawOutline(state.points);
  },
  dblClickHandler: () => {
    if (state.mode !== "poly" || state.points.length < 3) return;
    const points = state.points;
    setMode("poly");
    measure(points);
  },
});

// -- slides ----------------------------------------------------------------------------------------------------

async function openSlide(name) {
  state.name = name;
  state.map = state.grid = null;
  state.canvas = state.polygon = null;
  viewer.clearOverlays();
  delete document.body.dataset.map;
  $("slide-name").textContent = name;
  $("map-status").textContent = "";
  $("region").textContent = "draw a region to measure it";
  document.querySelectorAll("#slides button").forEach((b) => b.classList.toggle("open", b.dataset.name === name));
  viewer.addOnceHandler("open", () => loadMap(name).catch((error) => { $("map-status").textContent = error.message; }));
  viewer.open(`${slidePath(name)}.dzi`);
}

async function listSlides() {
  try {
    const { slides } = await (await api("/api/slides")).json();
    $("slides").innerHTML = slides.map((s) => `<li><button type="button" data-name="${s.name}">${s.name}</button></li>`).join("")
      || "<li class='muted'>no slides in the served folder</li>";
    $("slides").querySelectorAll("button").forEach((b) => b.addEventListener("click", () => openSlide(b.dataset.name)));
    const wanted = new URLSearchParams(location.search).get("slide");
    if (wanted) openSlide(wanted);
  } catch (error) {
    $("slides").innerHTML = `<li class="muted">${error.message}</li>`;
  }
}

$("layer").addEventListener("change", paint);
$("opacity").addEventListener("input", () => { if (state.canvas) state.canvas.style.opacity = $("opacity").value; });
$("draw-rect").addEventListener("click", () => setMode("rect"));
$("draw-poly").addEventListener("click", () => setMode("poly"));
$("export").addEventListener("click", exportRegion);
$("api-key").addEventListener("change", () => {
  localStorage.setItem("histoclass-api-key", $("api-key").value);
  viewer.ajaxHeaders = headers();
  listSlides();
});
window.histoclassViewer = { viewer, state, tileAt, measure, openSlide };
listSlides();
