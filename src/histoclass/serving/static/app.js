// Histology Classifier page: uploads each image to /api/predict (and /api/explain for heatmaps).
"use strict";

const state = { card: null, rows: [] };
const $ = (id) => document.getElementById(id);
const PARALLEL = 4;

function headers() {
  const key = $("api-key").value || localStorage.getItem("histoclass-api-key") || "";
  return key ? { "X-API-Key": key } : {};
}

function setStatus(text) { $("status").textContent = text; }

function addPairs(list, pairs) {
  list.replaceChildren();
  for (const [name, value] of pairs) {
    const dt = document.createElement("dt"); dt.textContent = name;
    const dd = document.createElement("dd"); dd.textContent = value;
    list.append(dt, dd);
  }
}

async function loadCard() {
  const response = await fetch("/api/model", { headers: headers() });
  if (!response.ok) {
    $("model-name").textContent = response.status === 401 ? "API key needed (sidebar)" : "model unavailable";
    $("key-box").open = response.status === 401;
    return;
  }
  const card = await response.json();
  state.card = card;
  $("model-name").textContent = `${card.name} · ${card.labels.length} classes`;
  addPairs($("card"), [["name", card.name], ["architecture", card.architecture], ["classes", card.labels.join(", ")],
    ["image size", `${card.image_size} px`], ["format", card.format],
    ["calibration", `temperature ${card.temperature.toFixed(2)}` + (card.set_coverage ? `, ${Math.round(card.set_coverage * 100)}% prediction sets` : "")],
    ["parameters", card.parameters ? card.parameters.toLocaleString() : "–"]]);
  const metrics = Object.entries(card.validation_metrics).map(([k, v]) =>
    [k.replace("val_", "").replaceAll("_", " "), typeof v === "number" ? v.toFixed(3) : String(v)]);
  addPairs($("metrics"), metrics.length ? metrics : [["–", "none recorded"]]);
  if (!card.explain) { $("show-heatmap").checked = false; $("show-heatmap").disabled = true; syncHeatmaps(); }
}

function resultCard(file) {
  const card = document.createElement("article");
  card.className = "result";
  const frame = document.createElement("div"); frame.className = "frame";
  const image = document.createElement("img"); image.alt = file.name;
  if (/\.(jpe?g|png|bmp)$/i.test(file.name) || file.type.startsWith("image/") && !/tiff?/.test(file.type)) {
    image.src = URL.createObjectURL(file);
  }
  const heat = document.createElement("img"); heat.className = "heatmap"; heat.alt = `Grad-CAM of ${file.name}`;
  frame.append(image, heat);
  const title = document.createElement("h3"); title.textContent = "…";
  const name = document.createElement("div"); name.className = "name"; name.textContent = file.name;
  const uncertain = document.createElement("div"); uncertain.className = "uncertain";
  const shift = document.createElement("div"); shift.className = "shift";
  const bars = document.createElement("div"); bars.className = "bars";
  card.append(frame, title, uncertain, shift, name, bars);
  $("results").append(card);
  return { card, image, heat, title, uncertain, shift, bars };
}

function drawBars(view, result) {
  const entries = Object.entries(result.probabilities).sort((a, b) => b[1] - a[1]);
  view.bars.replaceChildren(...entries.map(([label, p], i) => {
    const row = document.createElement("div"); row.className = "bar" + (i === 0 ? " top" : "");
    const name = document.createElement("span"); name.textContent = label; name.title = label;
    const track = document.createElement("div"); track.className = "track";
    const fill = document.createElement("div"); fill.className = "fill"; fill.style.width = `${(p * 100).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span"); value.textContent = `${(p * 100).toFixed(1)}%`;
    row.append(name, track, value);
    return row;
  }));
}

async function classify(file) {
  const view = resultCard(file);
  const form = new FormData(); form.append("files", file, file.name);
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form, headers: headers() });
    const body = await response.json();
    if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
    const result = body.results[0];
    view.title.textContent = `${result.label} (${(result.confidence * 100).toFixed(1)}%)`;
    view.card.dataset.label = result.label;
    showSet(view, result);
    showShift(view, result);
    drawBars(view, result);
    state.rows.push({ id: file.name, ...result });
    $("download").disabled = false;
    if (state.card && state.card.explain) await explain(file, view);
  } catch (error) {
    view.title.textContent = "Not classified";
    view.title.className = "error";
    view.bars.textContent = String(error.message || error);
    state.rows.push({ id: file.name, error: String(error.message || error) });
  }
}

function showShift(view, result) {
  // Above the run's threshold the image is unlike the training images: its answer deserves less trust.
  if (!result.unlike_training) return;
  view.shift.textContent = `unlike the training images (shift ${result.shift_score.toFixed(3)}): expect lower accuracy`;
  view.card.classList.add("is-unlike");
}

function showSet(view, result) {
  // The prediction set holds the true class with the model's stated coverage: more than one class means the
  // model cannot tell them apart on this image; none means the image is unlike what the model was calibrated on.
  if (!result.prediction_set) return;
  const coverage = state.card && state.card.set_coverage ? ` (${Math.round(state.card.set_coverage * 100)}% sets)` : "";
  if (result.set_size > 1) view.uncertain.textContent = `uncertain: ${result.prediction_set.join(" or ")}${coverage}`;
  else if (result.set_size === 0) view.uncertain.textContent = `uncertain: no class fits this image${coverage}`;
  view.card.classList.toggle("is-uncertain", result.set_size !== 1);
  view.card.dataset.set = result.prediction_set.join("|");
}

async function explain(file, view) {
  const form = new FormData(); form.append("file", file, file.name);
  const response = await fetch("/api/explain", { method: "POST", body: form, headers: headers() });
  if (!response.ok) return;
  view.heat.src = URL.createObjectURL(await response.blob());
  view.heat.classList.add("ready");
  if (!view.image.src) view.image.src = view.heat.src;  // TIFFs: browsers cannot show them, the overlay can
}

async function handle(files) {
  const queue = Array.from(files);
  let done = 0;
  setStatus(`classifying ${queue.length} image(s)…`);
  const worker = async () => {
    while (queue.length) { await classify(queue.shift()); done += 1; setStatus(`${done} done`); }
  };
  await Promise.all(Array.from({ length: PARALLEL }, worker));
  setStatus(`${done} image(s) classified`);
}

function csvCell(value) {
  const text = value === undefined || value === null ? "" : String(value);
  return /[",\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

function downloadCsv() {
  const labels = state.card ? state.card.labels : [];
  const sets = state.card && state.card.set_coverage !== null;
  const header = ["id", "label", "confidence", ...labels.map((l) => `prob_${l}`), ...(sets ? ["prediction_set", "set_size"] : [])];
  const lines = [header.map(csvCell).join(",")];
  for (const row of state.rows) {
    const probs = labels.map((l) => (row.probabilities ? row.probabilities[l].toFixed(6) : ""));
    const set = sets ? [row.prediction_set ? row.prediction_set.join("|") : "", row.set_size ?? ""] : [];
    lines.push([row.id, row.label || "", row.confidence ? row.confidence.toFixed(6) : "", ...probs, ...set].map(csvCell).join(","));
  }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
  link.download = "predictions.csv";
  link.click();
}

function syncHeatmaps() { document.body.classList.toggle("heatmaps", $("show-heatmap").checked); }

function setup() {
  const drop = $("drop");
  $("file-input").addEventListener("change", (event) => { handle(event.target.files); event.target.value = ""; });
  for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  drop.addEventListener("drop", (event) => handle(event.dataTransfer.files));
  $("show-heatmap").addEventListener("change", syncHeatmaps);
  $("download").addEventListener("click", downloadCsv);
  $("clear").addEventListener("click", () => { $("results").replaceChildren(); state.rows = []; $("download").disabled = true; setStatus(""); });
  $("api-key").addEventListener("change", () => { localStorage.setItem("histoclass-api-key", $("api-key").value); loadCard(); });
  syncHeatmaps();
  loadCard();
}

setup();
