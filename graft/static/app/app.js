"use strict";
// graft app, shared part: DOM helpers, the one api() helper (API key, errors as toasts), dialogs, the hash router,
// server-sent events, the project state and the image viewer. Each page lives in its own pages-*.js, loaded after.

const $ = (id) => document.getElementById(id);

/** A new element: attrs "class", "text", "dataset", on* listeners, true/false flags, anything else as an attribute. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

const pct = (p) => (100 * (Number(p) || 0)).toFixed(1) + "%";
const plural = (n, word) => `${Number(n).toLocaleString()} ${word}${n === 1 ? "" : "s"}`;

function fmtTime(seconds) {
  if (!seconds) return "";
  return new Date(seconds * 1000).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

/** Whether the key event comes from a place where typing means text (inputs, dialogs), not a shortcut. */
function typingTarget(event) {
  const t = event.target;
  return Boolean(t && (t.isContentEditable || ["INPUT", "SELECT", "TEXTAREA"].includes(t.tagName) ||
    t.closest("dialog")));
}

// ---------------------------------------------------------------------------------------------------------------
// toasts

function toast(message, kind = "info", ms = 6000) {
  const box = $("toasts");
  for (const old of box.children) if (old.dataset.text === message) old.remove();
  const close = el("button", { type: "button", "aria-label": "dismiss", text: "\u00d7" });
  const node = el("div", { class: "toast " + kind, role: kind === "error" ? "alert" : "status",
    dataset: { text: message } }, el("span", { text: message }), close);
  close.addEventListener("click", () => node.remove());
  box.append(node);
  setTimeout(() => node.remove(), kind === "error" ? Math.max(ms, 9000) : ms);
}

// ---------------------------------------------------------------------------------------------------------------
// the API key: asked for when the server answers 401, kept in this tab's sessionStorage

const KEY_ITEM = "graft-app-key";
let apiKey = null;
try { apiKey = sessionStorage.getItem(KEY_ITEM); } catch (err) { /* storage off: the key lives in this page */ }
let keyWaiters = null;

function setKey(key) {
  apiKey = key || null;
  try {
    if (apiKey) sessionStorage.setItem(KEY_ITEM, apiKey); else sessionStorage.removeItem(KEY_ITEM);
  } catch (err) { /* storage off */ }
  $("forget-key").hidden = !apiKey;
  connectEvents();
}

/** Ask for the key once for all the requests that got a 401 meanwhile; resolves when one is entered. */
function askKey(refused) {
  if (!keyWaiters) {
    keyWaiters = [];
    $("key-msg").textContent = refused ? "The server refused that key." : "";
    $("api-key").value = "";
    $("key-dialog").showModal();
  }
  return new Promise((resolve) => keyWaiters.push(resolve));
}

function initKeyDialog() {
  $("forget-key").hidden = !apiKey;
  $("key-form").addEventListener("submit", () => {
    setKey($("api-key").value.trim());
    const waiting = keyWaiters || [];
    keyWaiters = null;
    for (const resolve of waiting) resolve();
  });
  // nothing works without the key: Escape does not dismiss the prompt
  $("key-dialog").addEventListener("cancel", (event) => event.preventDefault());
  $("forget-key").addEventListener("click", () => { setKey(null); toast("The API key is forgotten in this tab."); });
}

// ---------------------------------------------------------------------------------------------------------------
// api(): every request to the server goes through here

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

function errorText(data, response) {
  const detail = data && data.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => (d.loc ? d.loc.slice(1).join(".") + ": " : "") + d.msg).join("; ");
  }
  return `${response.status} ${response.statusText || "error"}`;
}

/** fetch ``path`` (JSON in ``opts.json`` or a body in ``opts.body``); the answer's JSON (``opts.raw``: the
 * Response itself), or throws ApiError after a toast (``opts.quiet``: no toast). A 401 asks for the key and sends
 * the request again. */
async function api(path, opts = {}) {
  for (;;) {
    let response;
    try {
      response = await send(path, opts);
    } catch (err) {
      if (err.name === "AbortError") throw err;
      const message = "The server does not answer: is `graft app` still running?";
      if (!opts.quiet) toast(message, "error");
      throw new ApiError(message, 0);
    }
    if (response.status === 401) {
      await askKey(Boolean(apiKey));
      continue;
    }
    if (response.ok && opts.raw) return response;
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      const message = errorText(data, response);
      if (!opts.quiet) toast(message, "error");
      throw new ApiError(message, response.status);
    }
    return data;
  }
}

function send(path, opts) {
  const headers = {};
  let body = opts.body;
  if (apiKey) headers.Authorization = "Bearer " + apiKey;
  if (opts.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(opts.json);
  } else if (opts.contentType) headers["Content-Type"] = opts.contentType;
  const method = opts.method || (body === undefined ? "GET" : "POST");
  return fetch(path, { method, headers, body, signal: opts.signal });
}

const post = (path, json) => api(path, { json });
const thumbUrl = (id) => `api/images/${id}/thumb`;
const fileUrl = (id) => `api/images/${id}/file`;

// ---------------------------------------------------------------------------------------------------------------
// a small modal question: ask({title, message, input, options, ok}) -> the text/option chosen, or null

let askResolve = null;

function ask({ title, message = "", input = null, options = null, ok = "OK", danger = false }) {
  $("ask-title").textContent = title;
  $("ask-msg").textContent = message;
  const field = $("ask-input");
  const select = $("ask-select");
  field.hidden = input === null;
  field.value = input || "";
  select.hidden = !options;
  select.replaceChildren(...(options || []).map((o) => el("option", { value: o, text: o })));
  $("ask-ok").textContent = ok;
  $("ask-ok").classList.toggle("danger-fill", danger);
  if (askResolve) askResolve(null);
  $("ask-dialog").showModal();
  (input !== null ? field : options ? select : $("ask-ok")).focus();
  return new Promise((resolve) => { askResolve = resolve; });
}

function initAskDialog() {
  const finish = (value) => {
    const resolve = askResolve;
    askResolve = null;
    if ($("ask-dialog").open) $("ask-dialog").close();
    if (resolve) resolve(value);
  };
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!$("ask-input").hidden) finish($("ask-input").value.trim() || null);
    else if (!$("ask-select").hidden) finish($("ask-select").value || null);
    else finish("ok");
  });
  $("ask-cancel").addEventListener("click", () => finish(null));
  $("ask-dialog").addEventListener("close", () => finish(null));
}

// ---------------------------------------------------------------------------------------------------------------
// the router: #page or #page/argument; each page registers {show(arg), hide()}

const pages = {};
let currentPage = null;

function registerPage(name, handlers) { pages[name] = handlers; }

function route() {
  const [name, ...rest] = location.hash.slice(1).split("/");
  const page = pages[name] ? name : "data";
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
  const changed = page !== currentPage;
  if (changed && currentPage && pages[currentPage].hide) pages[currentPage].hide();
  for (const section of document.querySelectorAll("main > .page")) section.hidden = section.id !== page;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  currentPage = page;
  if (changed) window.scrollTo(0, 0);
  if (pages[page].show) pages[page].show(arg);
}

// ---------------------------------------------------------------------------------------------------------------
// server-sent events: train, train_done, model, check_done

const eventHandlers = {};
let events = null;
let eventsRetry = null;

function onEvent(name, handler) { (eventHandlers[name] = eventHandlers[name] || []).push(handler); }

function connectEvents() {
  if (events) events.close();
  clearTimeout(eventsRetry);
  events = new EventSource("api/events");
  for (const name of ["train", "train_done", "model", "check_done"]) {
    events.addEventListener(name, (event) => {
      let data = null;
      try { data = JSON.parse(event.data); } catch (err) { data = { line: event.data }; }
      for (const handler of eventHandlers[name] || []) handler(data || {});
    });
  }
  const source = events;
  source.addEventListener("error", () => {
    // the browser reconnects by itself unless the answer was an error (a 401, the server gone): then try later
    if (source.readyState === EventSource.CLOSED) eventsRetry = setTimeout(connectEvents, 5000);
  });
}

// ---------------------------------------------------------------------------------------------------------------
// the project: classes, counts, model status; pages subscribe with onProject(fn)

const state = { project: null, classes: [] };
const projectListeners = [];
let projectTimer = null;

function onProject(handler) { projectListeners.push(handler); }

async function loadProject(quiet = false) {
  const project = await api("api/project", { quiet });
  state.project = project;
  state.classes = (project.classes || []).map((c) => c.name);
  $("project-name").textContent = project.name || "";
  const counts = project.counts || {};
  $("project-counts").textContent = `${plural(counts.labelled || 0, "label")} \u00b7 ${(counts.pool || 0)
    .toLocaleString()} in the pool`;
  for (const handler of projectListeners) handler(project);
  return project;
}

/** Reload the project soon, once for a burst of changes. */
function refreshProject() {
  clearTimeout(projectTimer);
  projectTimer = setTimeout(() => loadProject(true).catch(() => {}), 250);
}

function modelText(model) {
  if (!model || model.status === "none") return "No model yet: label a few images of each class";
  if (model.status === "error") return "Model error: " + (model.error || "see the server's log");
  const base = model.version ? `model v${model.version}, trained on ${plural(model.labelled || 0, "label")}` : "model";
  if (model.status === "fitting") return base + " (updating\u2026)";
  return model.accuracy !== null && model.accuracy !== undefined ? `${base}, ~${pct(model.accuracy)} right` : base;
}

// ---------------------------------------------------------------------------------------------------------------
// runs, shared by Train, Results, Try and Export

const UNUSABLE = ["running", "starting", "queued", "error", "failed", "cancelled", "canceled", "interrupted"];

async function loadRuns() {
  const answer = await api("api/runs");
  return (answer.items || []).slice().sort((a, b) => (b.created || 0) - (a.created || 0));
}

/** Fill a run <select> with the usable runs (newest first), keeping ``wanted`` or the current choice. */
function fillRunPicker(select, runs, wanted) {
  const usable = runs.filter((r) => !UNUSABLE.includes(String(r.status).toLowerCase()));
  const keep = wanted || select.value;
  select.replaceChildren(...usable.map((r) => {
    const acc = r.metrics && r.metrics.best_val_acc !== undefined ? ` (val ${pct(r.metrics.best_val_acc)})` : "";
    return el("option", { value: r.name, text: r.name + acc });
  }));
  if (!usable.length) select.append(el("option", { value: "", text: "no finished run yet" }));
  if (usable.some((r) => r.name === keep)) select.value = keep;
  return select.value;
}

// ---------------------------------------------------------------------------------------------------------------
// image tiles and the viewer (a dialog: the image, Grad-CAM for a run, relabel, exclude)

function tile(item, { caption = null, badge = null, onClick = null } = {}) {
  const img = el("img", { src: thumbUrl(item.id), alt: item.name || `image ${item.id}`, loading: "lazy",
    decoding: "async", width: 192, height: 192 });
  const node = el("button", { type: "button", class: "tile" + (item.excluded ? " excluded" : ""),
    dataset: { id: item.id }, title: item.name || "" }, img,
  badge ? el("span", { class: "badge", text: badge }) : null,
  caption !== null ? el("span", { class: "cap", text: caption }) : null);
  if (onClick) node.addEventListener("click", () => onClick(item, node));
  return node;
}

const viewer = { item: null, run: null, onChange: null };

function openViewer(item, { run = null, onChange = null } = {}) {
  Object.assign(viewer, { item, run, onChange });
  $("viewer-title").textContent = item.name || `image ${item.id}`;
  $("viewer-img").src = fileUrl(item.id);
  $("viewer-img").alt = item.name || "";
  $("viewer-cam-toggle").hidden = !run;
  $("viewer-gradcam").checked = false;
  $("viewer-cam").hidden = true;
  $("viewer-cam").removeAttribute("src");
  const select = $("viewer-label");
  select.replaceChildren(el("option", { value: "", text: "(none: the pool)" }),
    ...state.classes.map((c) => el("option", { value: c, text: c })));
  viewerInfo();
  $("viewer").showModal();
}

function viewerInfo() {
  const item = viewer.item;
  $("viewer-label").value = item.label || "";
  $("viewer-exclude").textContent = item.excluded ? "Include again" : "Exclude";
  const bits = [item.label ? `labelled ${item.label}` : "not labelled"];
  if (item.split) bits.push(item.split);
  if (item.suggestion) bits.push(`model says ${item.suggestion} (${pct(item.confidence)})`);
  if (item.excluded) bits.push("excluded from training");
  $("viewer-info").textContent = bits.join(" \u00b7 ");
}

function initViewer() {
  $("viewer-close").addEventListener("click", () => $("viewer").close());
  $("viewer-label").addEventListener("change", async () => {
    const label = $("viewer-label").value || null;
    const answer = await post("api/label", { id: viewer.item.id, label, source: "data" }).catch(() => null);
    if (!answer) { viewerInfo(); return; }
    Object.assign(viewer.item, answer.image || { label });
    toast(label ? `Saved: ${label}` : "Saved: moved to the pool");
    viewerInfo();
    refreshProject();
    if (viewer.onChange) viewer.onChange(viewer.item);
  });
  $("viewer-exclude").addEventListener("click", async () => {
    const excluded = !viewer.item.excluded;
    const answer = await post("api/exclude", { id: viewer.item.id, excluded, source: "data" }).catch(() => null);
    if (!answer) return;
    viewer.item.excluded = excluded;
    toast(excluded ? "Excluded from training" : "Included again");
    viewerInfo();
    refreshProject();
    if (viewer.onChange) viewer.onChange(viewer.item);
  });
  $("viewer-gradcam").addEventListener("change", () => {
    const on = $("viewer-gradcam").checked && viewer.run;
    $("viewer-cam").hidden = !on;
    if (on) $("viewer-cam").src = `api/runs/${encodeURIComponent(viewer.run)}/gradcam/${viewer.item.id}`;
  });
  $("viewer").addEventListener("click", (event) => { if (event.target === $("viewer")) $("viewer").close(); });
}

// ---------------------------------------------------------------------------------------------------------------
// webcam: one helper for the Data and Try pages

async function startCamera(video) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    toast("This browser gives no camera here (a webcam needs http://127.0.0.1 or https).", "error");
    return null;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } },
      audio: false });
    video.srcObject = stream;
    video.hidden = false;
    await video.play().catch(() => {});
    return stream;
  } catch (err) {
    toast("No camera: " + (err.message || err.name), "error");
    return null;
  }
}

function stopCamera(video, stream) {
  if (stream) for (const track of stream.getTracks()) track.stop();
  video.srcObject = null;
  video.hidden = true;
}

/** The video's current frame as a JPEG blob. */
function grabFrame(video, canvas = document.createElement("canvas")) {
  canvas.width = video.videoWidth || 640;
  canvas.height = video.videoHeight || 480;
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
}

/** Files dropped on or picked in ``zone`` (a label around a file input) go to ``handle(files)``. */
function dropZone(zone, input, handle) {
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer && event.dataTransfer.files.length) handle([...event.dataTransfer.files]);
  });
  input.addEventListener("change", () => {
    if (input.files.length) handle([...input.files]);
    input.value = "";
  });
}

// ---------------------------------------------------------------------------------------------------------------
// start

document.addEventListener("DOMContentLoaded", () => {
  // a file dropped beside a drop zone must not make the browser leave the app to show it
  for (const name of ["dragover", "drop"]) window.addEventListener(name, (event) => event.preventDefault());
  initKeyDialog();
  initAskDialog();
  initViewer();
  for (const page of Object.values(pages)) if (page.init) page.init();
  onEvent("model", refreshProject);
  onEvent("train_done", refreshProject);
  window.addEventListener("hashchange", route);
  // the pages' ids are their routes: the browser's own scroll to the fragment is undone
  window.addEventListener("load", () => window.scrollTo(0, 0));
  connectEvents();
  route();
  loadProject().catch(() => {});
  setInterval(() => { if (!document.hidden) loadProject(true).catch(() => {}); }, 5000);
});
