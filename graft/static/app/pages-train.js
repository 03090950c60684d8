"use strict";
// Train page (#train): the settings, start and cancel, the live log and an accuracy curve from the events, and
// the table of runs.

const MAX_LOG_LINES = 3000;
const EPOCH_LINE = /train loss [\d.]+ (?:acc|mAP) ([\d.]+)\s+val loss [\d.]+ (?:acc|mAP) ([\d.]+)/;
const trainState = { running: false, curve: [], archSet: false };

function setTrainStatus(text, error = false) {
  $("train-status").textContent = text;
  $("train-status").classList.toggle("error", error);
}

function setRunning(running) {
  trainState.running = running;
  $("start-train").disabled = running;
  $("cancel-train").disabled = !running;
}

function trainSettings() {
  const auto = $("auto").checked;
  return {
    arch: $("arch").value.trim() || "mobilenet_v2",
    mode: $("mode").value,
    epochs: Number($("epochs").value) || 10,
    auto,
    budget: auto ? Number($("budget").value) || null : null,
  };
}

async function startTrain(event) {
  event.preventDefault();
  const answer = await post("api/train", trainSettings()).catch(() => null);
  if (!answer) return;
  $("train-log").replaceChildren();
  trainState.curve = [];
  drawCurve();
  setRunning(true);
  setTrainStatus(`Training ${answer.run}\u2026 (the log follows)`);
}

async function cancelTrain() {
  const answer = await post("api/train/cancel", {}).catch(() => null);
  if (answer) setTrainStatus(answer.cancelled ? "Cancelling\u2026" : "Nothing to cancel.");
}

// --- the log and the curve ---------------------------------------------------------------------------------------

function appendLog(line) {
  const log = $("train-log");
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 30;
  log.append(document.createTextNode(String(line).replace(/\n$/, "") + "\n"));
  while (log.childNodes.length > MAX_LOG_LINES) log.firstChild.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
  const epoch = EPOCH_LINE.exec(line);
  if (epoch) {
    trainState.curve.push({ train: Number(epoch[1]), val: Number(epoch[2]) });
    drawCurve();
  }
}

function drawCurve() {
  const canvas = $("train-curve");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 560;
  const height = Math.round(width * 200 / 560);
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const pad = { left: 38, right: 10, top: 10, bottom: 22 };
  const w = width - pad.left - pad.right;
  const h = height - pad.top - pad.bottom;
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#5a6475";
  ctx.strokeStyle = "#e3e7ee";
  for (let i = 0; i <= 4; i += 1) {
    const y = pad.top + h - (i / 4) * h;
    ctx.beginPath(); ctx.moveTo(pad.left, y); ctx.lineTo(pad.left + w, y); ctx.stroke();
    ctx.fillText(`${i * 25}%`, 4, y + 4);
  }
  const points = trainState.curve;
  if (!points.length) {
    ctx.fillText("the accuracy per epoch shows here during training", pad.left + 8, pad.top + h / 2);
    return;
  }
  const x = (i) => pad.left + (points.length === 1 ? w / 2 : (i / (points.length - 1)) * w);
  const y = (v) => pad.top + h - Math.min(Math.max(v, 0), 1) * h;
  for (const [key, colour] of [["train", "#8aa5d8"], ["val", "#2359c4"]]) {
    ctx.strokeStyle = colour;
    ctx.fillStyle = colour;
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo(x(i), y(p[key])) : ctx.moveTo(x(i), y(p[key]))));
    ctx.stroke();
    points.forEach((p, i) => { ctx.beginPath(); ctx.arc(x(i), y(p[key]), 2.5, 0, 2 * Math.PI); ctx.fill(); });
  }
  ctx.fillStyle = "#5a6475";
  ctx.fillText(`epoch ${points.length}: val ${pct(points[points.length - 1].val)}`, pad.left + 4, height - 6);
}

function trainDone(event) {
  setRunning(false);
  const metrics = event.metrics || {};
  const acc = metrics.best_val_acc !== undefined ? `, best val accuracy ${pct(metrics.best_val_acc)}` : "";
  const failed = UNUSABLE.includes(String(event.status).toLowerCase());
  setTrainStatus(`Run ${event.run || ""}: ${event.status || "done"}${acc}.`, failed && event.status !== "cancelled");
  loadRunsTable();
}

// --- the runs table ----------------------------------------------------------------------------------------------

function settingsText(settings) {
  let s = settings;
  if (typeof s === "string") {
    try { s = JSON.parse(s); } catch (err) { return s; }
  }
  if (!s || typeof s !== "object") return "";
  const bits = [s.auto ? "auto" : s.arch, s.mode, s.epochs ? `${s.epochs} epochs` : null];
  return bits.filter(Boolean).join(", ");
}

function runRow(run) {
  const metrics = run.metrics || {};
  const status = String(run.status || "");
  const link = (page, text) => el("a", { href: `#${page}/${encodeURIComponent(run.name)}`, text });
  const usable = !UNUSABLE.includes(status.toLowerCase());
  return el("tr", { class: "run-row", dataset: { run: run.name } },
    el("td", { text: run.name }),
    el("td", {}, el("span", { class: `st st-${status.toLowerCase()}`, text: status })),
    el("td", { text: fmtTime(run.created) }),
    el("td", { text: settingsText(run.settings) }),
    el("td", { class: "num", text: metrics.best_val_acc !== undefined ? pct(metrics.best_val_acc) : "" }),
    el("td", {}, usable ? link("results", "Results") : null, usable ? " \u00b7 " : null,
      usable ? link("export", "Export") : null));
}

async function loadRunsTable() {
  const runs = await loadRuns().catch(() => null);
  if (!runs) return;
  const body = $("runs").tBodies[0];
  body.replaceChildren(...runs.map(runRow));
  if (!runs.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No runs yet." })));
}

registerPage("train", {
  init() {
    $("train-form").addEventListener("submit", startTrain);
    $("cancel-train").addEventListener("click", cancelTrain);
    $("auto").addEventListener("change", () => { $("budget").disabled = !$("auto").checked; });
    onEvent("train", (event) => appendLog(event.line || ""));
    onEvent("train_done", trainDone);
    onProject((project) => {
      if (!trainState.archSet && project.arch) { $("arch").value = project.arch; trainState.archSet = true; }
      const training = project.training;
      const running = Boolean(training && ["running", "starting", "queued"].includes(String(training.status)));
      if (running !== trainState.running) {
        setRunning(running);
        if (running) setTrainStatus(`Training ${training.run}\u2026`);
      }
    });
    window.addEventListener("resize", () => { if (currentPage === "train") drawCurve(); });
  },
  show() {
    drawCurve();
    loadRunsTable();
  },
});
