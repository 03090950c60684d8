"use strict";
// Label page (#label): the pool one image at a time, most useful first (the server's queue); keys 1-9 assign,
// Enter accepts the suggestion, arrows move, u undoes. "Saved" shows only once the server has answered.

const lab = { items: [], at: 0, loading: false, pending: new Set(), seq: 0, modelVersion: null, shownNames: null };

const labCurrent = () => lab.items[lab.at] || null;

function setSaved(kind, text) {
  const saved = $("saved");
  saved.className = "saved " + kind;
  saved.textContent = text;
}

// --- the queue ---------------------------------------------------------------------------------------------------

/** Fetch the ranked pool. ``replace``: the images after the current one are replaced (a new model ranked them). */
async function loadQueue(replace = false) {
  if (lab.loading) return;
  lab.loading = true;
  let answer;
  try {
    answer = await api("api/queue?limit=50");
  } catch (err) {
    return;
  } finally {
    lab.loading = false;
  }
  lab.modelVersion = (answer.model && answer.model.version) ?? null;
  const fresh = answer.items || [];
  const byId = new Map(fresh.map((item) => [item.id, item]));
  if (replace) lab.items = lab.items.slice(0, lab.at + 1);
  for (const item of lab.items) {
    const update = byId.get(item.id);
    if (update && !item.label) Object.assign(item, { suggestion: update.suggestion, confidence: update.confidence });
  }
  const seen = new Set(lab.items.map((item) => item.id));
  lab.items.push(...fresh.filter((item) => !seen.has(item.id)));
  renderLabel();
}

function move(delta) {
  const at = Math.min(Math.max(lab.at + delta, 0), Math.max(lab.items.length - 1, 0));
  if (delta > 0 && lab.at + delta >= lab.items.length && lab.items.length) lab.at = lab.items.length; // past the end
  else lab.at = at;
  if (lab.items.length - lab.at < 8) loadQueue();
  renderLabel();
}

// --- rendering ---------------------------------------------------------------------------------------------------

function renderLabel() {
  const item = labCurrent();
  $("current").hidden = !item;
  $("label-empty").hidden = Boolean(item) || lab.loading;
  $("accept-suggestion").disabled = !item || !item.suggestion || item.excluded;
  for (const id of ["label-exclude", "label-next"]) $(id).disabled = !item;
  $("label-prev").disabled = lab.at === 0;
  if (item) {
    if ($("current").dataset.id !== String(item.id)) {
      $("current").src = fileUrl(item.id);
      $("current").dataset.id = item.id;
    }
    $("current").alt = item.name || `image ${item.id}`;
    const note = item.excluded ? " \u00b7 excluded" : item.label ? ` \u00b7 labelled ${item.label}` : "";
    $("current-name").textContent = (item.name || "") + note;
  } else {
    $("current-name").textContent = "";
  }
  renderSuggestion(item);
  markClassButtons(item);
  renderStrip();
  preloadNext();
}

function renderSuggestion(item) {
  const box = $("suggestion");
  if (!item) { box.textContent = ""; return; }
  if (!item.suggestion) {
    box.replaceChildren(el("span", { class: "muted", text: "No suggestion yet: the model learns as you label." }));
    return;
  }
  box.replaceChildren("Suggestion: ", el("strong", { text: item.suggestion }),
    el("span", { class: "muted", text: ` ${pct(item.confidence)}` }));
}

function renderClassButtons() {
  const names = state.classes.join("\n");
  if (names === lab.shownNames) return;
  lab.shownNames = names;
  if (!state.classes.length) {
    $("class-buttons").replaceChildren(el("p", { class: "muted" }, "No classes yet: add them on the ",
      el("a", { href: "#data", text: "Data" }), " page."));
    return;
  }
  $("class-buttons").replaceChildren(...state.classes.map((name, i) => {
    const button = el("button", { type: "button", class: "class-btn", dataset: { class: name }, title: name },
      i < 9 ? el("kbd", { text: String(i + 1) }) : null, el("span", { text: name }));
    button.addEventListener("click", () => assign(name, "keyboard"));
    return button;
  }));
  markClassButtons(labCurrent());
}

function markClassButtons(item) {
  for (const button of document.querySelectorAll("#class-buttons .class-btn")) {
    const name = button.dataset.class;
    button.classList.toggle("suggested", Boolean(item && item.suggestion === name && !item.label));
    button.classList.toggle("chosen", Boolean(item && item.label === name));
    button.disabled = !item;
  }
}

function renderStrip() {
  const start = Math.max(0, lab.at - 2);
  const shown = lab.items.slice(start, start + 14);
  $("strip").replaceChildren(...shown.map((item, i) => {
    const node = tile(item, { onClick: () => { lab.at = start + i; renderLabel(); } });
    node.classList.toggle("at", start + i === lab.at);
    node.classList.toggle("done", Boolean(item.label || item.excluded));
    node.setAttribute("aria-label", (item.name || `image ${item.id}`) + (item.label ? `, labelled ${item.label}` : ""));
    return node;
  }));
}

function preloadNext() {
  for (const item of lab.items.slice(lab.at + 1, lab.at + 3)) new Image().src = fileUrl(item.id);
}

function renderLabelCounts(project) {
  const counts = project.counts || {};
  $("labelled-count").textContent = `${plural(counts.labelled || 0, "image")} labelled \u00b7 ${(counts.pool || 0)
    .toLocaleString()} in the pool`;
  $("model-status").textContent = modelText(project.model);
}

// --- actions: assign, accept, exclude, undo ----------------------------------------------------------------------

/** Send one change for the current image; move on at once, and say "Saved" when the server has answered. */
async function sendChange(path, body, done, describe) {
  const item = labCurrent();
  if (!item) return;
  const seq = ++lab.seq;
  setSaved("pending", "Saving\u2026");
  const request = post(path, { id: item.id, ...body });
  lab.pending.add(request);
  move(1);
  try {
    await request;
    done(item);
    if (seq === lab.seq) setSaved("ok", `Saved: ${item.name || "image " + item.id} \u2192 ${describe}`);
    refreshProject();
  } catch (err) {
    if (seq === lab.seq) setSaved("error", "Not saved: " + err.message);
  } finally {
    lab.pending.delete(request);
    renderStrip();
    markClassButtons(labCurrent());
  }
}

function assign(label, source) {
  if (!label) return;
  sendChange("api/label", { label, source }, (item) => { item.label = label; item.excluded = false; }, label);
}

function acceptSuggestion() {
  const item = labCurrent();
  if (item && item.suggestion) assign(item.suggestion, "suggestion");
}

function excludeCurrent() {
  sendChange("api/exclude", { excluded: true, source: "keyboard" }, (item) => { item.excluded = true; }, "excluded");
}

async function undoLast() {
  await Promise.allSettled([...lab.pending]);
  setSaved("pending", "Undoing\u2026");
  const answer = await post("api/undo", {}).catch(() => null);
  if (!answer) { setSaved("error", "Not undone"); return; }
  const action = answer.action;
  if (!action) { setSaved("ok", "Nothing to undo"); return; }
  if (action.image_id !== null && action.image_id !== undefined) goBackTo(action);
  setSaved("ok", `Undone: ${action.kind} ${action.old || "none"} \u2192 ${action.new || "none"}`);
  refreshProject();
}

/** Show the image an undo touched again, with its restored state. */
function goBackTo(action) {
  let at = lab.items.findIndex((item) => item.id === action.image_id);
  if (at < 0) {
    lab.items.splice(lab.at, 0, { id: action.image_id, name: `image ${action.image_id}` });
    at = lab.at;
  }
  const item = lab.items[at];
  if (action.kind === "label") item.label = action.new || null;
  if (action.kind === "exclude") item.excluded = ["1", "true", 1, true].includes(action.new);
  lab.at = at;
  renderLabel();
}

// --- keys --------------------------------------------------------------------------------------------------------

function labelKey(event) {
  if (currentPage !== "label" || typingTarget(event) || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  if (/^[1-9]$/.test(key)) {
    const name = state.classes[Number(key) - 1];
    if (name && labCurrent()) assign(name, "keyboard");
  } else if (key === "Enter") {
    // a button reached with the keyboard keeps its own Enter
    if (event.target.matches && event.target.matches("button:focus-visible, a:focus-visible")) return;
    acceptSuggestion();
  } else if (key === "ArrowRight") move(1);
  else if (key === "ArrowLeft") move(-1);
  else if (key === "u" || key === "U") undoLast();
  else if (key === "x" || key === "X") excludeCurrent();
  else return;
  event.preventDefault();
}

registerPage("label", {
  init() {
    document.addEventListener("keydown", labelKey);
    $("accept-suggestion").addEventListener("click", acceptSuggestion);
    $("label-prev").addEventListener("click", () => move(-1));
    $("label-next").addEventListener("click", () => move(1));
    $("label-exclude").addEventListener("click", excludeCurrent);
    $("label-undo").addEventListener("click", undoLast);
    onProject((project) => {
      renderClassButtons();
      renderLabelCounts(project);
      const model = project.model || {};
      if (currentPage === "label" && (model.version ?? null) !== lab.modelVersion) {
        loadQueue(true);
      }
    });
    onEvent("model", () => { if (currentPage === "label") loadQueue(true); });
  },
  show() {
    renderClassButtons();
    if (state.project) renderLabelCounts(state.project);
    if (!lab.items.length || lab.at >= lab.items.length) loadQueue(); else loadQueue(true);
    renderLabel();
  },
});
