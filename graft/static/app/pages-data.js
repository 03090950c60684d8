"use strict";
// Data page (#data): the classes, the pool and the excluded images; a lazy paged grid of the chosen one; uploads by
// drop, picker or webcam into the chosen class.

const PAGE_SIZE = 100;
const UPLOAD_BATCH = 16;
// kind null until the project is known: the first view is then its first class (or the pool), loaded once
const dataView = { kind: null, name: null };
const grid = { gen: 0, offset: 0, total: null, loading: false };
const dataCam = { stream: null, timer: null, inFlight: 0, shots: 0 };
let shownClassNames = null;
let gridObserver = null;

function viewLabel() {
  if (dataView.kind === null) return "";
  if (dataView.kind === "class") return dataView.name;
  return dataView.kind === "pool" ? "Pool: unlabelled images" : "Excluded images";
}

function imagesPath(offset) {
  const q = new URLSearchParams({ offset: String(offset), limit: String(PAGE_SIZE) });
  if (dataView.kind === "class") q.set("label", dataView.name);
  else q.set(dataView.kind === "pool" ? "pool" : "excluded", "1");
  return "api/images?" + q;
}

// --- the class list ---------------------------------------------------------------------------------------------

function classItem(info) {
  const button = el("button", { type: "button", class: "list-item class-item", dataset: { name: info.name } },
    el("span", { text: info.name }), el("span", { class: "count", text: Number(info.count).toLocaleString() }));
  button.addEventListener("click", () => selectView("class", info.name));
  return el("li", {}, button);
}

function renderClassList(project) {
  const classes = project.classes || [];
  const names = classes.map((c) => c.name).join("\n");
  if (names !== shownClassNames) {
    const focused = document.activeElement && document.activeElement.dataset.name;
    $("class-list").replaceChildren(...classes.map(classItem));
    shownClassNames = names;
    const again = focused && $("class-list").querySelector(`[data-name="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  } else {
    for (const info of classes) {
      const item = $("class-list").querySelector(`[data-name="${CSS.escape(info.name)}"] .count`);
      if (item) item.textContent = Number(info.count).toLocaleString();
    }
  }
  const counts = project.counts || {};
  $("pool-count").textContent = Number(counts.pool || 0).toLocaleString();
  $("excluded-count").textContent = Number(counts.excluded || 0).toLocaleString();
  // the view's own total follows the project's counts (an upload or a label elsewhere changes it)
  const viewed = dataView.kind === "class" ? (classes.find((c) => c.name === dataView.name) || {}).count
    : dataView.kind === null ? null : counts[dataView.kind];
  if (viewed != null) $("view-total").textContent = plural(viewed, "image");
  if (dataView.kind === "class" && !state.classes.includes(dataView.name)) selectView("pool");
  markView();
}

function markView() {
  for (const item of document.querySelectorAll("#data .list-item")) {
    const on = dataView.kind === "class" ? item.dataset.name === dataView.name : item.dataset.view === dataView.kind;
    item.setAttribute("aria-current", on ? "true" : "false");
  }
  const isClass = dataView.kind === "class";
  for (const id of ["rename-class", "merge-class", "delete-class"]) $(id).hidden = !isClass;
  $("view-title").textContent = viewLabel();
  const canAdd = dataView.kind !== "excluded";
  $("drop").classList.toggle("disabled", !canAdd);
  $("drop-target").textContent = isClass ? `into ${dataView.name}` : canAdd ? "into the pool (unlabelled)" :
    "pick a class or the pool to add images";
  $("cam-shot").disabled = !dataCam.stream || !canAdd;
}

function selectView(kind, name = null) {
  const same = dataView.kind === kind && dataView.name === name;
  Object.assign(dataView, { kind, name });
  markView();
  if (!same) resetGrid();
}

// --- the grid: pages of 100 appended as the sentinel comes near; never re-rendered as a whole -------------------

function resetGrid() {
  grid.gen += 1;
  Object.assign(grid, { offset: 0, total: null, loading: false });
  $("grid").replaceChildren();
  $("grid-empty").hidden = true;
  $("view-total").textContent = "";
  loadMoreImages();
}

function sentinelNear() {
  const box = $("grid-sentinel").getBoundingClientRect();
  return !$("data").hidden && box.top < window.innerHeight + 800;
}

async function loadMoreImages() {
  if (dataView.kind === null || grid.loading || (grid.total !== null && grid.offset >= grid.total)) return;
  const gen = grid.gen;
  grid.loading = true;
  let answer;
  try {
    answer = await api(imagesPath(grid.offset));
  } catch (err) {
    if (gen === grid.gen) grid.loading = false;
    return;
  }
  if (gen !== grid.gen) return;
  grid.loading = false;
  const items = answer.items || [];
  // each page is its own small grid: appending lays out 100 tiles, and pages out of view skip rendering altogether
  if (items.length) $("grid").append(el("div", { class: "grid-page" }, ...items.map(gridTile)));
  grid.offset += items.length;
  grid.total = items.length ? answer.total : grid.offset;
  $("view-total").textContent = plural(grid.total, "image");
  $("grid-empty").hidden = grid.total > 0;
  if (items.length && sentinelNear()) loadMoreImages();
}

function gridTile(item) {
  let caption = item.name || "";
  if (dataView.kind === "pool" && item.suggestion) caption = `${item.suggestion} ${pct(item.confidence)}`;
  if (dataView.kind === "excluded") caption = item.label || "(no label)";
  return tile(item, { caption, badge: item.split === "val" ? "val" : null, onClick: openGridImage });
}

function openGridImage(item, node) {
  openViewer(item, {
    onChange: (changed) => {
      const stays = dataView.kind === "class" ? changed.label === dataView.name && !changed.excluded :
        dataView.kind === "pool" ? !changed.label && !changed.excluded : changed.excluded;
      if (stays || !node.isConnected) return;
      // the image left this view: drop its tile; the server's later pages move up by one
      node.remove();
      grid.offset = Math.max(0, grid.offset - 1);
      grid.total = Math.max(0, (grid.total || 1) - 1);
      $("view-total").textContent = plural(grid.total, "image");
    },
  });
}

/** New images were added to this view: they are fetched when the grid's end comes into view. */
function gridGrew() {
  grid.total = null;
  if (sentinelNear()) loadMoreImages();
}

// --- classes: add, rename, merge, delete -------------------------------------------------------------------------

async function addClass(event) {
  event.preventDefault();
  const name = $("new-class").value.trim();
  if (!name) { $("new-class").focus(); return; }
  const answer = await post("api/classes", { name }).catch(() => null);
  if (!answer) return;
  $("new-class").value = "";
  await loadProject().catch(() => {});
  selectView("class", name);
}

async function renameClass() {
  const old = dataView.name;
  const name = await ask({ title: `Rename ${old}`, input: old, ok: "Rename" });
  if (!name || name === old) return;
  if (!(await post("api/classes/rename", { old, new: name }).catch(() => null))) return;
  dataView.name = name;
  await loadProject().catch(() => {});
  markView();
}

async function mergeClass() {
  const src = dataView.name;
  const others = state.classes.filter((c) => c !== src);
  if (!others.length) { toast("There is no other class to merge into."); return; }
  const dst = await ask({ title: `Merge ${src} into\u2026`, options: others, ok: "Merge",
    message: `Every image of ${src} gets the chosen class, then ${src} is removed.` });
  if (!dst) return;
  if (!(await post("api/classes/merge", { src, dst }).catch(() => null))) return;
  await loadProject().catch(() => {});
  selectView("class", dst);
}

async function deleteClass() {
  const name = dataView.name;
  const sure = await ask({ title: `Delete ${name}?`, ok: "Delete", danger: true,
    message: "Its images go back to the pool (unlabelled); no image is deleted. Undo can bring the class back." });
  if (!sure) return;
  if (!(await post("api/classes/delete", { name }).catch(() => null))) return;
  await loadProject().catch(() => {});
  selectView("pool");
}

// --- uploads: drop, picker, webcam -------------------------------------------------------------------------------

function uploadPath(source) {
  const q = new URLSearchParams({ source });
  if (dataView.kind === "class") q.set("label", dataView.name);
  return "api/upload?" + q;
}

async function uploadFiles(files, source = "upload") {
  if (dataView.kind === "excluded") { toast("Pick a class or the pool first, then add the images."); return null; }
  const path = uploadPath(source);
  const added = [];
  const skipped = [];
  for (let i = 0; i < files.length; i += UPLOAD_BATCH) {
    const form = new FormData();
    for (const file of files.slice(i, i + UPLOAD_BATCH)) form.append("files", file, file.name || "image.jpg");
    if (files.length > UPLOAD_BATCH) $("drop-target").textContent = `uploading ${i} of ${files.length}\u2026`;
    const answer = await api(path, { body: form }).catch(() => null);
    if (!answer) break;
    added.push(...(answer.added || []));
    skipped.push(...(answer.skipped || []));
  }
  markView();
  if (source !== "webcam" || skipped.length) uploadReport(added, skipped);
  if (added.length) { refreshProject(); gridGrew(); }
  return added;
}

function uploadReport(added, skipped) {
  const where = dataView.kind === "class" ? dataView.name : "the pool";
  let text = `${plural(added.length, "image")} added to ${where}`;
  if (skipped.length) {
    const first = skipped.slice(0, 3).map((s) => `${s.name}: ${s.reason}`).join("; ");
    text += `; ${skipped.length} skipped (${first}${skipped.length > 3 ? "; \u2026" : ""})`;
  }
  toast(text, skipped.length && !added.length ? "error" : "info");
}

async function toggleDataCam() {
  if (dataCam.stream) {
    stopCamera($("cam"), dataCam.stream);
    dataCam.stream = null;
    $("cam-start").textContent = "Start webcam";
  } else {
    dataCam.stream = await startCamera($("cam"));
    if (dataCam.stream) $("cam-start").textContent = "Stop webcam";
  }
  markView();
}

async function camShot() {
  if (!dataCam.stream || dataCam.inFlight > 2) return;
  dataCam.inFlight += 1;
  try {
    const blob = await grabFrame($("cam"));
    if (!blob) return;
    const file = new File([blob], `webcam-${Date.now()}.jpg`, { type: "image/jpeg" });
    const added = await uploadFiles([file], "webcam");
    if (added && added.length) {
      dataCam.shots += added.length;
      const where = dataView.kind === "class" ? dataView.name : "the pool";
      $("cam-note").textContent = `${plural(dataCam.shots, "picture")} taken; the last went to ${where}.`;
    }
  } finally {
    dataCam.inFlight -= 1;
  }
}

function initCamButtons() {
  const shot = $("cam-shot");
  const stop = () => { clearInterval(dataCam.timer); dataCam.timer = null; };
  // hold to record: one picture at once, then about three a second while the button is held
  shot.addEventListener("pointerdown", (event) => {
    if (shot.disabled || event.button !== 0) return;
    camShot();
    stop();
    dataCam.timer = setInterval(camShot, 330);
  });
  for (const name of ["pointerup", "pointerleave", "pointercancel"]) shot.addEventListener(name, stop);
  shot.addEventListener("click", (event) => { if (event.detail === 0) camShot(); }); // keyboard: one picture
  $("cam-start").addEventListener("click", toggleDataCam);
}

// --- the page ----------------------------------------------------------------------------------------------------

registerPage("data", {
  init() {
    $("add-class-form").addEventListener("submit", addClass);
    $("rename-class").addEventListener("click", renameClass);
    $("merge-class").addEventListener("click", mergeClass);
    $("delete-class").addEventListener("click", deleteClass);
    for (const button of document.querySelectorAll("#special-list .list-item")) {
      button.addEventListener("click", () => selectView(button.dataset.view));
    }
    dropZone($("drop"), $("upload-file"), (files) => uploadFiles(files));
    initCamButtons();
    gridObserver = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) loadMoreImages();
    }, { rootMargin: "800px 0px" });
    gridObserver.observe($("grid-sentinel"));
    let first = true;
    onProject((project) => {
      // the first class is the first view, unless the project has none yet
      if (first && dataView.kind === null) {
        const classes = project.classes || [];
        if (classes.length) selectView("class", classes[0].name); else selectView("pool");
      }
      first = false;
      renderClassList(project);
    });
  },
  show() {
    markView();
    resetGrid();
  },
  hide() {
    if (dataCam.stream) toggleDataCam();
  },
});
