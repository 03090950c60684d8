"use strict";
// Check page (#check): graft doctor on the current labels; each finding a card with its images and the fixes:
// relabel to the suggestion or another class, exclude, keep as is; undo.

const KIND_TITLES = {
  leakage: "Val image with a copy in train",
  label_conflict: "Identical images under different classes",
  exact_duplicate: "Exact duplicates",
  near_duplicate: "Near duplicates",
  same_scene: "Same scene",
  label_error: "Likely wrong label",
  outlier: "Outlier (off-topic?)",
  blurry: "Blurry",
  dark: "Too dark",
  bright: "Too bright",
  tiny: "Tiny image",
  aspect: "Extreme aspect ratio",
  grayscale: "Grayscale",
  unreadable: "Unreadable",
  imbalance: "Class imbalance",
};
const CHECK_BUSY = ["running", "queued", "pending", "started", "starting"];
const FINDINGS_SHOWN = 60;
const checkState = { findings: [], shown: 0, timer: null };

function setCheckStatus(text, error = false) {
  $("check-status").textContent = text;
  $("check-status").classList.toggle("error", error);
}

async function runCheck() {
  $("run-check").disabled = true;
  setCheckStatus("Checking the labelled images\u2026 (this can take a minute)");
  const answer = await post("api/check", {}).catch(() => null);
  if (answer) showCheck(answer); else $("run-check").disabled = false;
}

async function pollCheck() {
  clearTimeout(checkState.timer);
  const answer = await api("api/check", { quiet: true }).catch(() => null);
  if (answer) showCheck(answer);
}

function showCheck(answer) {
  const status = String(answer.status || "").toLowerCase();
  clearTimeout(checkState.timer);
  if (CHECK_BUSY.includes(status)) {
    $("run-check").disabled = true;
    setCheckStatus("Checking the labelled images\u2026 (this can take a minute)");
    // the check_done event says when; a slow poll in case an event was missed
    checkState.timer = setTimeout(pollCheck, 4000);
    return;
  }
  $("run-check").disabled = false;
  if (status === "error" || answer.error) {
    setCheckStatus("The check failed: " + (answer.error || "see the server's log"), true);
    return;
  }
  const findings = answer.findings || [];
  if (status === "none" || (!status && !findings.length)) {
    setCheckStatus("Not checked yet: Run check looks at the current labels.");
  } else {
    setCheckStatus(findings.length ? `${plural(findings.length, "finding")} to look at.` :
      "Nothing found: the labels look clean.");
  }
  checkState.findings = findings;
  checkState.shown = 0;
  $("findings").replaceChildren();
  showMoreFindings();
}

function showMoreFindings() {
  const next = checkState.findings.slice(checkState.shown, checkState.shown + FINDINGS_SHOWN);
  checkState.shown += next.length;
  const old = $("more-findings");
  if (old) old.remove();
  $("findings").append(...next.map(findingCard));
  const left = checkState.findings.length - checkState.shown;
  if (left > 0) {
    const more = el("button", { type: "button", id: "more-findings", class: "btn ghost", text: `Show ${left} more` });
    more.addEventListener("click", showMoreFindings);
    $("findings").append(more);
  }
}

// --- one finding -------------------------------------------------------------------------------------------------

function findingCard(finding) {
  const severity = String(finding.severity || "warning").toLowerCase();
  const images = finding.images || [];
  const keep = images.length ? el("button", { type: "button", class: "btn ghost keep", text: "Keep as is" }) : null;
  const card = el("article", { class: `finding sev-${severity}`, dataset: { kind: finding.kind } });
  card.append(...[
    el("div", { class: "finding-head" },
      el("h2", { text: KIND_TITLES[finding.kind] || finding.kind }),
      el("span", { class: `sev sev-${severity}`, text: severity }),
      el("span", { class: "spacer" }), keep),
    el("p", { text: finding.message || "" }),
    images.length ? el("div", { class: "finding-images" }, ...images.map((image) => findingImage(finding, image, card)))
      : null,
    el("p", { class: "note" })].filter(Boolean));
  if (keep) keep.addEventListener("click", () => keepFinding(finding, card));
  return card;
}

function findingImage(finding, image, card) {
  const box = el("div", { class: "finding-image", dataset: { id: image.id } });
  const fix = finding.suggested && finding.suggested !== image.label
    ? el("button", { type: "button", class: "btn fix-suggested", text: `Relabel to ${finding.suggested}` }) : null;
  const select = el("select", { class: "relabel", "aria-label": `relabel ${image.name || image.id}` },
    el("option", { value: "", text: "Relabel to\u2026" }),
    ...state.classes.filter((c) => c !== image.label).map((c) => el("option", { value: c, text: c })));
  const exclude = el("button", { type: "button", class: "btn ghost exclude", text: "Exclude" });
  box.append(...[tile(image, { caption: image.label || "(no label)", onClick: () => openViewer(image) }), fix, select,
    exclude].filter(Boolean));
  if (fix) fix.addEventListener("click", () => relabelImage(image, finding.suggested, box, card));
  select.addEventListener("change", () => { if (select.value) relabelImage(image, select.value, box, card); });
  exclude.addEventListener("click", () => excludeImage(image, box, card));
  return box;
}

function markDone(box, card, text) {
  box.classList.add("done");
  for (const control of box.querySelectorAll("button.btn, select")) control.disabled = true;
  card.querySelector(".note").textContent = text;
  const open = card.querySelectorAll(".finding-image:not(.done)").length;
  // a pair is settled once one of its images is fixed or excluded
  if (open === 0 || card.dataset.kind !== "imbalance") card.classList.add("resolved");
  refreshProject();
}

async function relabelImage(image, label, box, card) {
  if (!(await post("api/label", { id: image.id, label, source: "doctor" }).catch(() => null))) return;
  image.label = label;
  markDone(box, card, `${image.name || "image " + image.id} relabelled to ${label}.`);
}

async function excludeImage(image, box, card) {
  if (!(await post("api/exclude", { id: image.id, excluded: true, source: "doctor" }).catch(() => null))) return;
  markDone(box, card, `${image.name || "image " + image.id} excluded from training.`);
}

async function keepFinding(finding, card) {
  const ids = finding.images.map((image) => image.id);
  if (!(await post("api/review", { ids, source: "doctor" }).catch(() => null))) return;
  for (const box of card.querySelectorAll(".finding-image")) box.classList.add("done");
  for (const control of card.querySelectorAll("button.btn, select")) control.disabled = true;
  card.querySelector(".note").textContent = "Kept as is: it will not be shown again.";
  card.classList.add("resolved");
}

async function undoCheck() {
  const answer = await post("api/undo", {}).catch(() => null);
  if (!answer) return;
  const action = answer.action;
  if (!action) { toast("Nothing to undo."); return; }
  toast(`Undone: ${action.kind} ${action.old || "none"} \u2192 ${action.new || "none"}`);
  for (const box of document.querySelectorAll(`.finding-image[data-id="${action.image_id}"]`)) {
    const card = box.closest(".finding");
    box.classList.remove("done");
    for (const control of card.querySelectorAll("button.btn, select")) control.disabled = false;
    card.classList.remove("resolved");
    card.querySelector(".note").textContent = "";
  }
  refreshProject();
}

registerPage("check", {
  init() {
    $("run-check").addEventListener("click", runCheck);
    $("check-undo").addEventListener("click", undoCheck);
    onEvent("check_done", pollCheck);
  },
  show() {
    if (!checkState.findings.length) pollCheck();
  },
});
