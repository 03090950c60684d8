"use strict";
// Try page (#try): an image dropped, pasted or picked, or the webcam live about once a second, classified by a
// run, with the probabilities as bars and Grad-CAM on request. Export page (#export): the run's zip to download.

const LIVE_EVERY_MS = 1000;
const tryState = { stream: null, timer: null, busy: false, previewUrl: null, canvas: null, file: null };

async function tryImage(blob) {
  const run = $("try-run").value;
  if (!run) { toast("No finished run yet: train one on the Train page first.", "error"); return; }
  if (tryState.busy) return;
  tryState.busy = true;
  const q = new URLSearchParams({ run, gradcam: $("try-gradcam").checked ? "1" : "0" });
  try {
    const answer = await api(`api/try?${q}`, { body: blob, contentType: "application/octet-stream" });
    renderProbs(answer.top || []);
    const overlay = $("try-cam-overlay");
    overlay.hidden = !answer.gradcam;
    if (answer.gradcam) overlay.src = answer.gradcam;
  } catch (err) {
    if (tryState.stream) stopTryCam(); // a live loop must not repeat the same error every second
  } finally {
    tryState.busy = false;
  }
}

function tryFile(file) {
  if (!file) return;
  if (tryState.stream) stopTryCam();
  tryState.file = null;
  if (tryState.previewUrl) URL.revokeObjectURL(tryState.previewUrl);
  tryState.previewUrl = URL.createObjectURL(file);
  $("try-preview").src = tryState.previewUrl;
  $("try-preview").hidden = false;
  tryState.file = file;
  tryImage(file);
}

/** Rows are reused, so that live predictions move the bars instead of redrawing them. */
function renderProbs(top) {
  const box = $("try-result");
  while (box.children.length > top.length) box.lastChild.remove();
  while (box.children.length < top.length) {
    box.append(el("div", { class: "prob" }, el("span", { class: "name" }),
      el("span", { class: "bar" }, el("span")), el("span", { class: "pct" })));
  }
  top.forEach((p, i) => {
    const row = box.children[i];
    row.querySelector(".name").textContent = p.label;
    row.querySelector(".name").title = p.label;
    row.querySelector(".pct").textContent = pct(p.probability);
    const fill = row.querySelector(".bar span");
    requestAnimationFrame(() => { fill.style.width = (100 * p.probability).toFixed(2) + "%"; });
  });
}

// --- the webcam, live --------------------------------------------------------------------------------------------

async function liveFrame() {
  if (tryState.busy || !tryState.stream) return;
  tryState.canvas = tryState.canvas || document.createElement("canvas");
  const blob = await grabFrame($("try-cam"), tryState.canvas);
  if (blob) await tryImage(blob);
}

async function startTryCam() {
  if (!$("try-run").value) { toast("No finished run yet: train one on the Train page first.", "error"); return; }
  tryState.stream = await startCamera($("try-cam"));
  if (!tryState.stream) return;
  $("try-preview").hidden = true;
  $("try-cam-start").textContent = "Stop webcam";
  $("try-cam-note").textContent = "live: a prediction about every second";
  tryState.timer = setInterval(liveFrame, LIVE_EVERY_MS);
}

function stopTryCam() {
  clearInterval(tryState.timer);
  tryState.timer = null;
  stopCamera($("try-cam"), tryState.stream);
  tryState.stream = null;
  $("try-cam-start").textContent = "Start webcam";
  $("try-cam-note").textContent = "";
}

function pasteImage(event) {
  if (currentPage !== "try" || !event.clipboardData) return;
  const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
  if (file) { event.preventDefault(); tryFile(file); }
}

registerPage("try", {
  init() {
    dropZone($("try-drop"), $("try-file"), (files) => tryFile(files[0]));
    $("try-cam-start").addEventListener("click", () => (tryState.stream ? stopTryCam() : startTryCam()));
    document.addEventListener("paste", pasteImage);
    // Grad-CAM switched on or off: the image on show again (live frames follow by themselves)
    $("try-gradcam").addEventListener("change", () => {
      if (tryState.file && !tryState.stream) tryImage(tryState.file);
    });
  },
  async show(arg) {
    fillRunPicker($("try-run"), await loadRuns().catch(() => []), arg);
  },
  hide() {
    if (tryState.stream) stopTryCam();
  },
});

// --- Export ------------------------------------------------------------------------------------------------------

function updateDownload() {
  const run = $("export-run").value;
  const link = $("download");
  const int8 = $("export-int8").checked ? 1 : 0;
  if (!run) {
    link.setAttribute("aria-disabled", "true");
    link.href = "#export";
    $("export-note").textContent = "No finished run yet: train one on the Train page first.";
    return;
  }
  link.removeAttribute("aria-disabled");
  link.href = `api/runs/${encodeURIComponent(run)}/export?int8=${int8}`;
  $("export-note").textContent = int8 ? "The int8 model is built and checked against the float one first: this " +
    "takes a little while." : "The ONNX model is checked against the run's own predictions before it is zipped.";
}

/** The zip through api(): the key in a header, an error as a toast instead of a saved error page. */
async function downloadZip(event) {
  const link = $("download");
  if (link.getAttribute("aria-disabled") === "true") { event.preventDefault(); return; }
  event.preventDefault();
  const note = $("export-note").textContent;
  $("export-note").textContent = "Building and checking the model\u2026";
  link.setAttribute("aria-disabled", "true");
  const path = link.getAttribute("href").replace(/[?&]key=[^&]*/, "");
  try {
    const response = await api(path, { raw: true });
    const blob = await response.blob();
    const named = /filename="?([^";]+)"?/.exec(response.headers.get("Content-Disposition") || "");
    const url = URL.createObjectURL(blob);
    const save = el("a", { href: url, download: named ? named[1] : `${$("export-run").value}.zip` });
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    $("export-note").textContent = `Downloaded (${(blob.size / 1e6).toFixed(1)} MB).`;
  } catch (err) {
    $("export-note").textContent = note;
  } finally {
    link.removeAttribute("aria-disabled");
  }
}

registerPage("export", {
  init() {
    $("download").addEventListener("click", downloadZip);
    $("export-run").addEventListener("change", updateDownload);
    for (const radio of document.querySelectorAll("input[name=precision]")) {
      radio.addEventListener("change", updateDownload);
    }
  },
  async show(arg) {
    fillRunPicker($("export-run"), await loadRuns().catch(() => []), arg);
    updateDownload();
  },
});
