"use strict";
// Results page (#results or #results/RUN): a run's confusion matrix on its val images (a cell's click shows its
// images: Grad-CAM and relabel in the viewer), the per-class table and the top losses.

const resultsState = { run: null, data: null, gen: 0 };

function setResultsStatus(text, error = false) {
  $("results-status").textContent = text;
  $("results-status").classList.toggle("error", error);
}

async function showResults(run) {
  const gen = ++resultsState.gen;
  resultsState.run = run;
  resultsState.data = null;
  for (const id of ["confusion", "cell-images", "top-losses"]) $(id).replaceChildren();
  $("per-class").tBodies[0].replaceChildren();
  $("results-accuracy").textContent = "";
  $("cell-title").textContent = "Images";
  if (!run) { setResultsStatus("No finished run yet: train one on the Train page."); return; }
  setResultsStatus("Computing the results on the val images\u2026");
  const data = await api(`api/runs/${encodeURIComponent(run)}/results`).catch((err) => {
    if (gen === resultsState.gen) setResultsStatus("No results: " + err.message, true);
    return null;
  });
  if (!data || gen !== resultsState.gen) return;
  resultsState.data = data;
  setResultsStatus("");
  if (data.accuracy !== undefined && data.accuracy !== null) $("results-accuracy").textContent =
    `val accuracy ${pct(data.accuracy)}`;
  renderMatrix(data);
  renderPerClass(data.per_class || []);
  renderTopLosses(data.top_losses || []);
}

// --- the confusion matrix ----------------------------------------------------------------------------------------

function cellColour(fraction, diagonal) {
  const [r, g, b] = diagonal ? [29, 122, 70] : [179, 38, 30];
  return `rgba(${r}, ${g}, ${b}, ${fraction > 0 ? 0.1 + 0.75 * fraction : 0})`;
}

function matrixCell(data, t, p, rowTotal) {
  const classes = data.classes;
  const count = Number(data.matrix[t][p]) || 0;
  const fraction = rowTotal ? count / rowTotal : 0;
  const cell = el("td", { class: "cell" + (count ? "" : " zero"), dataset: { t, p }, text: String(count),
    title: `true ${classes[t]}, predicted ${classes[p]}: ${count}`, tabindex: count ? 0 : null,
    role: count ? "button" : null });
  cell.style.background = count ? cellColour(fraction, t === p) : "";
  if (fraction > 0.5) cell.style.color = "#fff";
  if (count) {
    cell.addEventListener("click", () => showCell(t, p, cell));
    cell.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); showCell(t, p, cell); }
    });
  }
  return cell;
}

function renderMatrix(data) {
  const classes = data.classes || [];
  const head = el("tr", {}, el("th", { class: "corner", text: "true \u2193 / predicted \u2192" }),
    ...classes.map((name) => el("th", { scope: "col", text: name, title: name })));
  const rows = classes.map((name, t) => {
    const rowTotal = (data.matrix[t] || []).reduce((a, b) => a + Number(b), 0);
    return el("tr", {}, el("th", { scope: "row", text: name, title: name }),
      ...classes.map((_, p) => matrixCell(data, t, p, rowTotal)));
  });
  $("confusion").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
}

function showCell(t, p, cell) {
  const data = resultsState.data;
  for (const other of document.querySelectorAll("#confusion td.cell.selected")) other.classList.remove("selected");
  cell.classList.add("selected");
  const ids = (data.cells || {})[`${t},${p}`] || [];
  const truth = data.classes[t];
  $("cell-title").textContent = `True ${truth}, predicted ${data.classes[p]}: ${plural(ids.length, "image")}`;
  $("cell-images").replaceChildren(...ids.map((id) => {
    const item = { id, name: `image ${id}`, label: truth };
    return tile(item, { caption: t === p ? truth : `\u2192 ${data.classes[p]}`,
      onClick: () => openViewer(item, { run: resultsState.run }) });
  }));
  $("cell-images").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

// --- per class and top losses ------------------------------------------------------------------------------------

function renderPerClass(rows) {
  const num = (v) => el("td", { class: "num", text: v === undefined || v === null ? "" : Number(v).toFixed(3) });
  $("per-class").tBodies[0].replaceChildren(...rows.map((r) => el("tr", {}, el("td", { text: r.name }),
    num(r.precision), num(r.recall), num(r.f1), el("td", { class: "num", text: String(r.support ?? "") }))));
}

function renderTopLosses(losses) {
  if (!losses.length) {
    $("top-losses").replaceChildren(el("p", { class: "muted", text: "No losses to show." }));
    return;
  }
  $("top-losses").replaceChildren(...losses.map((loss) => {
    const item = { id: loss.id, name: `image ${loss.id}`, label: loss.true };
    return tile(item, { caption: `${loss.true} \u2192 ${loss.pred}`, badge: pct(loss.confidence),
      onClick: () => openViewer(item, { run: resultsState.run }) });
  }));
}

registerPage("results", {
  init() {
    $("results-run").addEventListener("change", () => showResults($("results-run").value || null));
    onEvent("train_done", () => { if (currentPage === "results") this.show(); });
  },
  async show(arg) {
    const runs = await loadRuns().catch(() => []);
    const run = fillRunPicker($("results-run"), runs, arg) || null;
    if (run !== resultsState.run || !resultsState.data) showResults(run);
  },
});
