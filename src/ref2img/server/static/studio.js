// ref2img studio. Plain JavaScript over the server's public API (the routes every client uses),
// authenticated by the session cookie; state-changing requests carry the session's CSRF token.
"use strict";

const $ = (id) => document.getElementById(id);
const CREATE = "/v1/open/capacity/application/tm_reference_img2img";
const RECOGNIZE = "/v1/open/capacity/application/tm_reference_img2mask";
const REPAINT = "/v1/open/capacity/application/tm_redrawing";
// The protocol's modes and statuses in words, as the server spells them (GET /studio/session).
let MODES = {};
let STATUS = {};
let INFO = null;   // GET /v1/info: the preset this server runs and every range the protocol allows
const HISTORY_PAGE = 20;
const LAST_TASK = "ref2img-last-task";  // localStorage: the task this browser ran last

const state = {
  csrf: "",
  reference: null,   // the URL a task is given (an upload of ours, or the user's URL)
  init: null,
  running: null,     // the task id being generated
  mapTask: 0,        // a counter: only the newest control-map (or subject-mask) request may show its result
  historyPage: 1,
  controls: [],      // the controls editor's rows, in order (see "the controls editor")
};

// -- the API --------------------------------------------------------------------------------
class ApiError extends Error {}

async function api(path, { method = "GET", json, form } = {}) {
  const headers = {};
  let body;
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form !== undefined) body = form;
  let response;
  try {
    response = await fetch(path, { method, headers, body, credentials: "same-origin" });
  } catch (error) {
    throw new ApiError("the server cannot be reached: " + error.message);
  }
  let envelope;
  try { envelope = await response.json(); } catch { throw new ApiError(`the server answered HTTP ${response.status}`); }
  if (envelope.code !== 0) throw new ApiError(envelope.msg || `error ${envelope.code}`);
  return envelope.data;
}

function resultUrls(data) {
  if (!data.result) return [];
  const result = JSON.parse(data.result);
  return result.images_path || result.mask_path || [];
}

// Follow a task with Server-Sent Events until it ends; `onData` sees every change.
function watch(taskId, onData) {
  return new Promise((resolve) => {
    const events = new EventSource(`/v1/tasks/${encodeURIComponent(taskId)}/events`);
    events.addEventListener("task", (event) => {
      const data = JSON.parse(event.data);
      onData(data);
      if (data.status >= 3) { events.close(); resolve(data); }
    });
  });
}

function showError(id, error) { $(id).textContent = error ? String(error.message || error) : ""; }

// -- signing in -------------------------------------------------------------------------------
async function boot() {
  applyTheme(localStorage.getItem("ref2img-theme") ||
             (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light"));
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (token) {
    history.replaceState(null, "", location.pathname);  // the token leaves the address bar at once
    try { await api("/studio/session", { method: "POST", json: { token } }); }
    catch (error) { showSignIn(); showError("sign-in-error", error); return; }
  }
  const session = await api("/studio/session");
  MODES = session.modes; STATUS = session.statuses;
  if (session.signed_in) showStudio(session); else showSignIn();
}

function showSignIn() {
  $("loading").hidden = true; $("studio").hidden = true; $("who").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-key").focus();
}

function showStudio(session) {
  state.csrf = session.csrf;
  $("loading").hidden = true; $("sign-in").hidden = true;
  const key = session.app_key;  // shortened: the whole id is in the tooltip
  $("who-key").textContent = key.length > 14 ? `${key.slice(0, 7)}…${key.slice(-4)}` : key;
  $("who-key").title = key;
  $("who").hidden = false;
  $("studio").hidden = false;
  api("/v1/info").then(applyInfo).catch(() => {});
  loadHistory(true).then(restoreLatest);
}

// The ranges and words come from the server (protocol.py), so the page states none of them itself.
function applyInfo(info) {
  INFO = info;
  const preset = info.preset;
  $("preset").textContent = `model: ${preset.name}` + (preset.random_weights
    ? " (random weights for testing: the images are noise)" : "");
  $("preset").classList.toggle("random", preset.random_weights);
  $("preset").title = preset.description || "";
  $("preset").hidden = false;
  const [low, high] = info.ranges.width;
  for (const id of ["width", "height"]) { $(id).min = low; $(id).max = high; }
  $("size-legend").textContent = `Size (${low} to ${high} px a side)`;
  $("repaint-sides").textContent = `Sides ${low} to ${high} px.`;
  [$("intensity").min, $("intensity").max] = info.ranges.control_intensity;
  [$("seed").min, $("seed").max] = info.ranges.seed;
  [$("steps").min, $("steps").max] = info.ranges.steps;
  [$("guidance").min, $("guidance").max] = info.ranges.guidance_scale;
  for (const id of ["prompt", "negative-prompt", "repaint-prompt"]) $(id).maxLength = info.ranges.prompt_chars;
  const chosen = $("batch-size").value;
  const [fewest, most] = info.ranges.batch_size;
  $("batch-size").replaceChildren(...Array.from({ length: most - fewest + 1 }, (_, i) => new Option(String(fewest + i))));
  $("batch-size").value = chosen;
  document.querySelectorAll("[data-mode]").forEach((label) => { label.textContent = info.modes[label.dataset.mode]; });
  // A server of several presets: the request may pick one (its default first).
  $("model").replaceChildren(...info.presets.map((preset) =>
    new Option(`${preset.name}${preset.default ? " (default)" : ""}${preset.family ? ` · ${preset.family}` : ""}`,
               preset.name)));
  $("model-picker").hidden = info.presets.length < 2;
}

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("sign-in-error", "");
  try {
    const session = await api("/studio/session", { method: "POST",
      json: { app_key: $("sign-in-key").value.trim(), app_secret: $("sign-in-secret").value } });
    $("sign-in-secret").value = "";
    showStudio(session);
  } catch (error) { showError("sign-in-error", error); }
});

$("sign-out").addEventListener("click", async () => {
  await api("/studio/session", { method: "DELETE" }).catch(() => {});
  state.csrf = "";
  showSignIn();
});

// -- theme ------------------------------------------------------------------------------------
function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  $("theme").textContent = theme === "dark" ? "Light theme" : "Dark theme";
  $("theme").setAttribute("aria-pressed", String(theme === "dark"));
}
$("theme").addEventListener("click", () => {
  const theme = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
  localStorage.setItem("ref2img-theme", theme);
  applyTheme(theme);
});

// -- the reference: drop, paste, pick or URL ---------------------------------------------------
async function upload(file) {
  const form = new FormData();
  form.append("file", file, file.name || "pasted.png");
  return (await api("/v1/files", { method: "POST", form })).url;
}

async function useReferenceFile(file) {
  showError("reference-error", "");
  try { setReference(await upload(file)); } catch (error) { showError("reference-error", error); }
}

function setReference(url) {
  state.reference = url;
  $("reference-preview").src = url;
  $("reference-preview").hidden = false;
  $("drop-help").hidden = true;
  $("reference-url").value = url.includes("/v1/files/") ? "" : url;
  refreshControlMap();
  state.controls.filter((control) => !control.image).forEach(refreshRowMap);
}

const drop = $("drop");
drop.addEventListener("click", () => $("reference-file").click());
drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("reference-file").click(); }
});
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault(); drop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) useReferenceFile(file);
});
$("reference-file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) useReferenceFile(file);
  event.target.value = "";
});
document.addEventListener("paste", (event) => {
  if ($("studio").hidden) return;
  const item = [...event.clipboardData.items].find((entry) => entry.type.startsWith("image/"));
  if (item) { event.preventDefault(); useReferenceFile(item.getAsFile()); }
});
$("reference-url").addEventListener("change", (event) => {
  const url = event.target.value.trim();
  if (url) setReference(url);
});

// -- the control map, live --------------------------------------------------------------------
function mode() { return document.querySelector('input[name="mode"]:checked').value; }
document.querySelectorAll('input[name="mode"]').forEach((radio) => radio.addEventListener("change", () => {
  refreshControlMap(); updateControlsEditor();
}));

// The map (or subject mask) the server finds in `image` for `type`: a recognition task, followed to its end.
async function recognizedMap(image, type) {
  const created = await api(RECOGNIZE, { method: "POST", json: { init_image: image, control_type: type } });
  const done = await watch(created.task_id, () => {});
  if (done.status !== 3) throw new ApiError(done.reason || STATUS[done.status]);
  return resultUrls(done)[0];
}

async function refreshControlMap() {
  const figure = $("control-map-figure");
  const ticket = ++state.mapTask;
  if (!state.reference) { figure.hidden = true; return; }
  figure.hidden = false;
  $("control-map").removeAttribute("src");
  $("control-map-caption").textContent = `finding the ${MODES[mode()]}…`;
  try {
    const url = await recognizedMap(state.reference, mode());
    if (ticket !== state.mapTask) return;  // the reference or the mode changed meanwhile
    $("control-map").src = url;
    $("control-map-caption").textContent = `${MODES[mode()]} ${mode() === "2" ? "mask" : "map"}`;
  } catch (error) {
    if (ticket === state.mapTask) $("control-map-caption").textContent = "no control map: " + error.message;
  }
}

// -- the controls editor: more maps at once (the API's `controls`) ------------------------------
// The mode above is the first control (the reference, the intensity slider) unless it is subject,
// which keeps the reference's subject beside the rows; the server allows 3 controls, each type once.
const CONTROL_TYPES = ["0", "1", "3"];
const CONTROL_CODES = { edge: "0", pose: "1", depth: "3" };  // the echo spells a control's type as a word
const MAX_CONTROLS = 3;
let controlIds = 0;

function maxRows() { return mode() === "2" ? MAX_CONTROLS : MAX_CONTROLS - 1; }

function addControl(control = {}) {
  const used = new Set([mode(), ...state.controls.map((row) => row.type)]);
  const row = {
    id: ++controlIds,
    type: control.type ? (CONTROL_CODES[control.type] || String(control.type))
                       : CONTROL_TYPES.find((type) => !used.has(type)) || "0",
    image: control.image || null,  // null: the reference
    map: Boolean(control.map),
    intensity: control.intensity ?? 0.5,
    ticket: 0,
  };
  row.element = controlRow(row);
  state.controls.push(row);
  updateControlsEditor();
  refreshRowMap(row);
  return row;
}

function removeControl(row) {
  state.controls = state.controls.filter((other) => other !== row);
  row.ticket += 1;  // a map still being found for it is dropped
  updateControlsEditor();
}

function moveControl(row, step) {
  const index = state.controls.indexOf(row);
  const target = index + step;
  if (target < 0 || target >= state.controls.length) return;
  [state.controls[index], state.controls[target]] = [state.controls[target], state.controls[index]];
  updateControlsEditor();
  row.element.querySelector(step < 0 ? ".control-up" : ".control-down").focus();
}

function updateControlsEditor() {
  // Existing rows are moved, not rebuilt, so each keeps its map and focus.
  $("controls").replaceChildren(...state.controls.map((row) => row.element));
  state.controls.forEach((row, index) => {
    row.element.querySelector(".control-up").disabled = index === 0;
    row.element.querySelector(".control-down").disabled = index === state.controls.length - 1;
    row.element.setAttribute("aria-label", `control ${index + 1}`);
  });
  $("control-add").disabled = state.controls.length >= maxRows();
}

function controlRow(row) {
  const item = document.createElement("li");
  const figure = document.createElement("figure");
  const map = document.createElement("img"); map.alt = "this control's map"; map.className = "control-row-map";
  const caption = document.createElement("figcaption");
  figure.append(map, caption);
  const knobs = document.createElement("div");

  const typeLabel = document.createElement("label"); typeLabel.textContent = "Keep ";
  const type = document.createElement("select"); type.className = "control-type";
  for (const code of CONTROL_TYPES) type.append(new Option(MODES[code], code, false, code === row.type));
  type.addEventListener("change", () => { row.type = type.value; refreshRowMap(row); });
  typeLabel.append(type);

  const intensityLabel = document.createElement("label"); intensityLabel.textContent = "Intensity ";
  const value = document.createElement("output"); value.textContent = Number(row.intensity).toFixed(2);
  const intensity = document.createElement("input");
  Object.assign(intensity, { type: "range", min: "0", max: "1", step: "0.05", value: String(row.intensity), className: "control-intensity" });
  intensity.addEventListener("input", () => { row.intensity = Number(intensity.value); value.textContent = row.intensity.toFixed(2); });
  intensityLabel.append(value, intensity);

  const imageLabel = document.createElement("label"); imageLabel.textContent = "Its own image (else the reference) ";
  const file = document.createElement("input");
  Object.assign(file, { type: "file", accept: "image/*", className: "control-file" });
  file.addEventListener("change", async () => {
    const picked = file.files[0];
    file.value = "";
    if (!picked) return;
    try { row.image = await upload(picked); refreshRowMap(row); } catch (error) { caption.textContent = error.message; }
  });
  imageLabel.append(file);

  const tools = document.createElement("div"); tools.className = "tools";
  const readyLabel = document.createElement("label"); readyLabel.className = "check";
  const ready = document.createElement("input"); ready.type = "checkbox"; ready.className = "control-ready"; ready.checked = row.map;
  ready.addEventListener("change", () => { row.map = ready.checked; refreshRowMap(row); });
  readyLabel.append(ready, " a ready map");
  const useReference = button("Use the reference", "control-use-reference", () => { row.image = null; row.map = false; ready.checked = false; refreshRowMap(row); });
  const up = button("↑", "control-up", () => moveControl(row, -1), "move up");
  const down = button("↓", "control-down", () => moveControl(row, 1), "move down");
  const remove = button("Remove", "control-remove", () => removeControl(row));
  tools.append(readyLabel, useReference, up, down, remove);

  knobs.append(typeLabel, intensityLabel, imageLabel, tools);
  item.append(figure, knobs);
  row.figure = { map, caption };
  return item;
}

function button(text, className, onClick, label) {
  const element = document.createElement("button");
  element.type = "button"; element.textContent = text; element.className = className;
  if (label) element.setAttribute("aria-label", label);
  element.addEventListener("click", onClick);
  return element;
}

// A row's live map: its own image as it is when that is a ready map, else what the server finds in it.
async function refreshRowMap(row) {
  const { map, caption } = row.figure;
  const ticket = ++row.ticket;
  const image = row.image || state.reference;
  row.element.querySelector(".control-ready").disabled = !row.image;
  map.removeAttribute("src");
  if (!image) { caption.textContent = "no image yet"; return; }
  if (row.map && row.image) { map.src = row.image; caption.textContent = `ready ${MODES[row.type]} map`; return; }
  caption.textContent = `finding the ${MODES[row.type]}…`;
  try {
    const url = await recognizedMap(image, row.type);
    if (ticket !== row.ticket) return;  // the row changed meanwhile
    map.src = url;
    caption.textContent = `${MODES[row.type]} map${row.image ? "" : " (reference)"}`;
  } catch (error) {
    if (ticket === row.ticket) caption.textContent = "no map: " + error.message;
  }
}

$("control-add").addEventListener("click", () => {
  if (state.controls.length < maxRows()) addControl().element.querySelector(".control-type").focus();
});

function controlsFromForm() {
  const rows = state.controls.map((row) => {
    const entry = { type: row.type, intensity: row.intensity };
    if (row.image) entry.image = row.image;
    if (row.map && row.image) entry.map = true;
    return entry;
  });
  if (mode() === "2") return rows;
  return [{ type: mode(), intensity: Number($("intensity").value) }, ...rows];
}

function fillControls(settings) {
  state.controls.forEach((row) => { row.ticket += 1; });
  state.controls = [];
  const controls = settings.controls || [];
  // Unless the subject is kept, the first control is the mode above (the reference, the slider).
  const rows = settings.control_type === "2" ? controls : controls.slice(1);
  if (settings.control_type !== "2" && controls.length) {
    $("intensity").value = controls[0].intensity; $("intensity").dispatchEvent(new Event("input"));
  }
  rows.forEach((control) => addControl(control));
  updateControlsEditor();
}

// -- the knobs --------------------------------------------------------------------------------
$("intensity").addEventListener("input", () => { $("intensity-value").textContent = Number($("intensity").value).toFixed(2); });
$("seed-random").addEventListener("change", () => { $("seed").disabled = $("seed-random").checked; });
document.querySelectorAll("[data-size]").forEach((button) => button.addEventListener("click", () => {
  const [width, height] = button.dataset.size.split("x");
  $("width").value = width; $("height").value = height;
}));
$("init-file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  showError("init-error", "");
  if (!file) return;
  try { state.init = await upload(file); $("init-url").value = ""; } catch (error) { showError("init-error", error); }
});
$("init-url").addEventListener("change", (event) => { state.init = event.target.value.trim() || null; });
$("init-clear").addEventListener("click", () => { state.init = null; $("init-url").value = ""; $("init-file").value = ""; });

function settingsFromForm() {
  const settings = {
    prompt: $("prompt").value,
    reference_image: state.reference || "",
    control_type: mode(),
    control_intensity: Number($("intensity").value),
    width: Number($("width").value),
    height: Number($("height").value),
    batch_size: Number($("batch-size").value),
  };
  if ($("negative-prompt").value.trim()) settings.negative_prompt = $("negative-prompt").value;
  if (!$("seed-random").checked && $("seed").value !== "") settings.seed = Number($("seed").value);
  if (state.init) settings.init_image = state.init;
  if (state.controls.length) settings.controls = controlsFromForm();
  if ($("steps").value !== "") settings.steps = Number($("steps").value);
  if (!$("model-picker").hidden) settings.model = $("model").value;
  if ($("guidance").value !== "") settings.guidance_scale = Number($("guidance").value);
  return settings;
}

function fillForm(settings) {
  $("prompt").value = settings.prompt || "";
  $("negative-prompt").value = settings.negative_prompt || "";
  $("steps").value = settings.steps ?? "";
  if (settings.model && [...$("model").options].some((option) => option.value === settings.model)) $("model").value = settings.model;
  $("guidance").value = settings.guidance_scale ?? "";
  $("advanced").open ||= Boolean(settings.negative_prompt || settings.steps != null || settings.guidance_scale != null);
  document.querySelector(`input[name="mode"][value="${settings.control_type}"]`).checked = true;
  $("intensity").value = settings.control_intensity; $("intensity").dispatchEvent(new Event("input"));
  $("width").value = settings.width; $("height").value = settings.height;
  $("batch-size").value = String(settings.batch_size);
  $("seed-random").checked = settings.seed == null;
  $("seed").disabled = settings.seed == null;
  $("seed").value = settings.seed == null ? "" : settings.seed;
  state.init = settings.init_image || null;
  $("init-url").value = state.init && !state.init.includes("/v1/files/") ? state.init : "";
  if (settings.reference_image) setReference(settings.reference_image);
  fillControls(settings);
}

// -- generating ---------------------------------------------------------------------------------
$("job").addEventListener("submit", (event) => { event.preventDefault(); generate(settingsFromForm()); });

async function generate(settings) {
  showError("job-error", "");
  if (!settings.reference_image) { showError("job-error", "reference_image: give a reference image first"); return; }
  $("generate").disabled = true;
  try {
    const created = await api(CREATE, { method: "POST", json: settings });
    settings.seed = created.seed;  // the server decides a seed the form left open; each image shows its own
    $("seed").value = created.seed;  // the seed this run used, even when the form left it random
    localStorage.setItem(LAST_TASK, created.task_id);  // what this browser brings back after a reload
    await follow(created.task_id, settings);
    loadHistory(true);
  } catch (error) {
    showError("job-error", error);  // the form keeps everything the user typed
  } finally {
    state.running = null;
    $("generate").disabled = false;
    $("cancel").hidden = true;
  }
}

// Watch a task to its end: progress and previews, then its images; a cancel is said plainly, not as an error.
async function follow(taskId, settings) {
  state.running = taskId;
  $("cancel").hidden = false;
  $("run-progress").hidden = false; $("run-progress").value = 0;
  const done = await watch(taskId, showRun);
  $("run-preview").hidden = true;
  if (done.status === 3) showImages(done, settings);
  else if (done.status === 5) { $("run-status").textContent = "cancelled: no images"; $("run-status").className = "status-note"; }
  else showError("job-error", `${STATUS[done.status]}: ${done.reason}`);
}

// After a reload: this browser's latest task comes back with its settings and reference, and its images (or its
// progress, if it still runs).
async function restoreLatest() {
  const latest = state.latest;
  if (!latest || state.running || state.reference) return;
  fillForm(latest.settings);
  if (latest.status === 3) { showImages(latest, latest.settings); return; }
  if (latest.status <= 2) {
    $("generate").disabled = true;
    try { await follow(latest.task_id, latest.settings); } finally {
      state.running = null; $("generate").disabled = false; $("cancel").hidden = true;
    }
  }
}

function showRun(data) {
  $("run-status").className = "";
  const words = data.status === 1 ? `queued: ${data.position} ahead of it, about ${Math.round(data.wait_time)} s`
    : data.status === 2 ? `generating: ${data.progress}%` : `${STATUS[data.status]} (${data.progress}%)`;
  $("run-status").textContent = words;
  $("run-progress").value = data.progress;
  if (data.preview) { $("run-preview").src = data.preview; $("run-preview").hidden = false; }
}

$("cancel").addEventListener("click", async () => {
  if (!state.running) return;
  try { await api("/v1/open/pub/task/cancel", { method: "POST", json: { task_id: state.running } }); }
  catch (error) { showError("job-error", error); }
});

function showImages(data, settings) {
  const gallery = $("gallery");
  gallery.replaceChildren();
  resultUrls(data).forEach((url, index) => {
    const seed = settings.seed + index;
    const item = document.createElement("li");
    const image = document.createElement("img");
    image.src = url; image.alt = `result ${index + 1}, seed ${seed}`;
    image.addEventListener("click", () => openViewer(index));
    const tools = document.createElement("div"); tools.className = "tools";
    const download = document.createElement("a");
    download.href = url; download.download = `ref2img-${data.task_id}-${index + 1}.png`;
    download.textContent = "Download";
    const again = document.createElement("button");
    again.type = "button"; again.textContent = "Same settings again";
    again.addEventListener("click", () => { fillForm(settings); generate({ ...settings, seed: undefined }); });
    const repaintThis = document.createElement("button");
    repaintThis.type = "button"; repaintThis.textContent = "Repaint part";
    repaintThis.addEventListener("click", () => { loadRepaintImage(url); $("repaint").scrollIntoView(); });
    const reuse = document.createElement("button");
    reuse.type = "button"; reuse.textContent = "Use as reference";
    reuse.addEventListener("click", () => { setReference(url); $("drop").focus(); });
    const caption = document.createElement("span"); caption.textContent = `seed ${seed}`;
    tools.append(download, reuse, repaintThis, again, caption);
    item.append(image, tools);
    gallery.append(item);
  });
  $("run-status").textContent = `done: ${resultUrls(data).length} image(s)`;
  $("run-progress").value = 100;
  showMarks(data);
  viewer.items = resultUrls(data).map((url, index) => ({ url, seed: settings.seed + index, settings, task: data.task_id }));
}

// What the images carry (docs/provenance.md): the C2PA manifest, the watermark's id, and a content filter's flag.
function showMarks(data) {
  const marks = data.marks || {};
  const parts = [];
  if (marks.c2pa) parts.push("C2PA manifest");
  if (marks.watermark) parts.push(`invisible watermark ${marks.watermark}`);
  const said = parts.length ? `Marked as AI-generated: ${parts.join(", ")}.` : "Not marked as AI-generated.";
  $("run-marks").textContent = data.flagged ? `${said} Flagged: ${data.flagged}` : said;
  $("run-marks").classList.toggle("flagged", Boolean(data.flagged));
  $("run-marks").hidden = false;
}

// -- the viewer: a result at full size, its seed and settings; arrows step through the run's images ----
const viewer = { items: [], index: 0 };

function openViewer(index) {
  showInViewer(index);
  if (!$("viewer").open) $("viewer").showModal();
}

function showInViewer(index) {
  const count = viewer.items.length;
  viewer.index = (index + count) % count;
  const item = viewer.items[viewer.index];
  const settings = item.settings;
  $("viewer-image").src = item.url;
  $("viewer-image").alt = `result ${viewer.index + 1} of ${count}, seed ${item.seed}`;
  $("viewer-caption").textContent = `${viewer.index + 1} of ${count} · seed ${item.seed} · ${modesInWords(settings)}` +
    ` · intensity ${settings.control_intensity} · ${settings.width}×${settings.height} · “${settings.prompt}”`;
  $("viewer-download").href = item.url;
  $("viewer-download").download = `ref2img-${item.task}-${viewer.index + 1}.png`;
  $("viewer-prev").disabled = $("viewer-next").disabled = count < 2;
}

$("viewer-prev").addEventListener("click", () => showInViewer(viewer.index - 1));
$("viewer-next").addEventListener("click", () => showInViewer(viewer.index + 1));
$("viewer-close").addEventListener("click", () => $("viewer").close());
$("viewer").addEventListener("keydown", (event) => {  // Escape closes a dialog by itself
  if (event.key === "ArrowLeft") { event.preventDefault(); showInViewer(viewer.index - 1); }
  if (event.key === "ArrowRight") { event.preventDefault(); showInViewer(viewer.index + 1); }
});
$("viewer").addEventListener("click", (event) => { if (event.target === $("viewer")) $("viewer").close(); });

// -- repaint: a mask brush over an image, then tm_redrawing ---------------------------------------
// The canvas has the image's own pixel size (the mask must match it) and is scaled by CSS with the image;
// strokes are opaque white on transparent, shown at half opacity, and exported as white on black.
const mask = $("repaint-mask");
const brush = { drawing: false, last: null };
state.repaintImage = null;  // the URL tm_redrawing is given

async function loadRepaintImage(url) {
  showError("repaint-load-error", "");
  const image = $("repaint-image");
  image.onload = () => {
    mask.width = image.naturalWidth; mask.height = image.naturalHeight;
    clearMask();
    $("repaint-editor").hidden = false;
  };
  image.onerror = () => showError("repaint-load-error", "the image could not be shown");
  state.repaintImage = url;
  image.src = url;
}

$("repaint-file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file) return;
  try { loadRepaintImage(await upload(file)); } catch (error) { showError("repaint-load-error", error); }
});
$("repaint-use-reference").addEventListener("click", () => {
  if (state.reference) loadRepaintImage(state.reference);
  else showError("repaint-load-error", "give a reference image first");
});

function clearMask() {
  mask.getContext("2d").clearRect(0, 0, mask.width, mask.height);
}
$("mask-clear").addEventListener("click", clearMask);
$("brush-size").addEventListener("input", () => { $("brush-size-value").textContent = $("brush-size").value; });

function maskPoint(event) {  // from the page's pixels to the image's
  const box = mask.getBoundingClientRect();
  return { x: (event.clientX - box.left) * mask.width / box.width, y: (event.clientY - box.top) * mask.height / box.height };
}

function stroke(from, to) {
  const context = mask.getContext("2d");
  const erasing = document.querySelector('input[name="brush-mode"]:checked').value === "erase";
  const scale = mask.width / mask.getBoundingClientRect().width;  // the brush is sized in screen pixels
  context.globalCompositeOperation = erasing ? "destination-out" : "source-over";
  context.strokeStyle = context.fillStyle = "#ffffff";
  context.lineWidth = Number($("brush-size").value) * scale;
  context.lineCap = context.lineJoin = "round";
  context.beginPath(); context.moveTo(from.x, from.y); context.lineTo(to.x, to.y); context.stroke();
}

mask.addEventListener("pointerdown", (event) => {
  mask.setPointerCapture(event.pointerId);
  brush.drawing = true; brush.last = maskPoint(event);
  stroke(brush.last, brush.last);
});
mask.addEventListener("pointermove", (event) => {
  if (!brush.drawing) return;
  const point = maskPoint(event);
  stroke(brush.last, point); brush.last = point;
});
for (const name of ["pointerup", "pointercancel"]) mask.addEventListener(name, () => { brush.drawing = false; });

function maskHasPaint() {
  const pixels = mask.getContext("2d").getImageData(0, 0, mask.width, mask.height).data;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) return true;
  return false;
}

function maskBlob() {  // white (redraw) on black, at the image's size
  const flat = document.createElement("canvas");
  flat.width = mask.width; flat.height = mask.height;
  const context = flat.getContext("2d");
  context.fillStyle = "#000000"; context.fillRect(0, 0, flat.width, flat.height);
  context.drawImage(mask, 0, 0);
  return new Promise((resolve) => flat.toBlob(resolve, "image/png"));
}

$("repaint-go").addEventListener("click", async () => {
  showError("repaint-error", "");
  if (!state.repaintImage) return;
  const body = { prompt: $("repaint-prompt").value, init_image: state.repaintImage };
  $("repaint-go").disabled = true;
  try {
    if (maskHasPaint()) {
      const blob = await maskBlob();
      body.mask_url = await upload(new File([blob], "mask.png", { type: "image/png" }));
    }
    const created = await api(REPAINT, { method: "POST", json: body });
    $("repaint-status").textContent = body.mask_url ? "repainting the masked area…" : "no mask: redrawing the whole image…";
    const done = await watch(created.task_id, (data) => {
      if (data.status === 2) $("repaint-status").textContent = `repainting: ${data.progress}%`;
    });
    if (done.status !== 3) throw new ApiError(`${STATUS[done.status]}: ${done.reason}`);
    $("repaint-result").src = resultUrls(done)[0];
    $("repaint-result").hidden = false;
    $("repaint-status").textContent = "done";
  } catch (error) {
    showError("repaint-error", error);  // the mask and the prompt stay as they were
    $("repaint-status").textContent = "";
  } finally {
    $("repaint-go").disabled = false;
  }
});

// -- history ------------------------------------------------------------------------------------
async function loadHistory(fromStart) {
  if (state.historyLoading) return;
  state.historyLoading = true;
  let page;
  try {
    page = await api(`/v1/tasks?page=${fromStart ? 1 : state.historyPage + 1}&page_size=${HISTORY_PAGE}`);
  } catch (error) { return; } finally { state.historyLoading = false; }
  if (fromStart) { state.historyPage = 1; $("history").replaceChildren(); } else state.historyPage += 1;
  const tasks = page.tasks.filter((entry) => entry.kind === "img2img");
  if (fromStart) state.latest = tasks.find((task) => task.task_id === localStorage.getItem(LAST_TASK)) || null;
  for (const task of tasks) $("history").append(historyItem(task));
  $("history-more").hidden = state.historyPage * HISTORY_PAGE >= page.total;
}
$("history-more").addEventListener("click", () => loadHistory(false));
// Older tasks load by themselves as the list's end scrolls into view (the button stays, for the keyboard).
new IntersectionObserver((entries) => {
  if (entries.some((entry) => entry.isIntersecting) && !$("history-more").hidden) loadHistory(false);
}).observe($("history-more"));

function modesInWords(settings) {  // "edges", or "subject + pose + depth" for a task with controls
  const controls = (settings.controls || []).map((control) => MODES[CONTROL_CODES[control.type] || control.type]);
  if (!controls.length) return MODES[settings.control_type];
  return (settings.control_type === "2" ? [MODES["2"], ...controls] : controls).join(" + ");
}

function historyItem(task) {
  const settings = task.settings;
  const item = document.createElement("li");
  const [first] = resultUrls(task);
  if (first) { const image = document.createElement("img"); image.src = first; image.alt = ""; item.append(image); }
  else {  // no image (cancelled, failed, still running): a box of the same size, so the rows line up
    const thumb = document.createElement("div"); thumb.className = "thumb"; thumb.textContent = STATUS[task.status];
    item.append(thumb);
  }
  const about = document.createElement("div"); about.className = "about";
  const prompt = document.createElement("p"); prompt.textContent = settings.prompt;
  const meta = document.createElement("p"); meta.className = "meta";
  const when = new Date(task.created_at * 1000).toLocaleString();
  meta.textContent = `${STATUS[task.status]} · ${modesInWords(settings)} · ${settings.width}×${settings.height}` +
    ` · ${settings.batch_size} image(s)${settings.seed != null ? ` · seed ${settings.seed}` : ""} · ${when}`;
  about.append(prompt, meta);
  const load = document.createElement("button");
  load.type = "button"; load.textContent = "Load settings";
  load.addEventListener("click", () => { fillForm(settings); $("prompt").focus(); });
  item.append(about, load);
  return item;
}

boot().catch((error) => { $("loading").textContent = "The studio could not start: " + error.message; });
