// The circuit explorer, controls: render, the inputs, clicks, the address, window.explorer (see explorer.js).
// ---- controls ---------------------------------------------------------------------------------------
const pct = (b) => `${+(b * 100).toFixed(3)}%`;
const slider = $("step"), budgetSelect = $("budget"), shownSelect = $("shown"), referenceSelect = $("reference");
const criticalSelect = $("critical");
slider.max = String(checkpoints.length - 1);
D.budgets.forEach((b, i) => budgetSelect.add(new Option(pct(b) + (b === D.budget ? " (files)" : ""), String(i))));
snaps.forEach((s, i) => {
  shownSelect.add(new Option(s.label, String(i)));
  referenceSelect.add(new Option(s.label, String(i)));
});
criticalSelect.add(new Option("none", ""));
for (const [rule, variants] of Object.entries(D.critical)) {
  for (const [variant, layers] of Object.entries(variants)) {
    criticalSelect.add(new Option(`${variant}, ${rule}: ${layers.join(", ") || "none"}`, `${rule}|${variant}`));
  }
}

const api = { ready: false, drawnEdges: 0, drawnEdgesA: null, addedEdges: 0, removedEdges: 0, state,
              lastRenderMs: 0, renders: 0, forceRaster: false };

function render() {
  const started = performance.now();
  views.a.hidden = !state.side;
  let b;
  if (state.side) {
    const a = drawView("a", state.reference, -1);
    api.drawnEdgesA = a.drawn;
    b = drawView("b", state.shown, state.reference);
  } else {
    api.drawnEdgesA = null;
    b = drawView("b", state.shown, state.reference === state.shown ? -1 : state.reference);
  }
  Object.assign(api, { drawnEdges: b.drawn, drawnLines: b.lines, addedEdges: b.added, removedEdges: b.removed });
  document.body.dataset.drawnEdges = String(b.drawn);
  const k = checkpoints.indexOf(state.shown);
  if (k >= 0) slider.value = String(k);
  slider.classList.toggle("elsewhere", k < 0); // another run's circuit is shown: no step of this run
  shownSelect.value = String(state.shown);
  referenceSelect.value = String(state.reference);
  budgetSelect.value = String(state.budget);
  const snap = snaps[state.shown];
  $("step-label").textContent = snap.step === null ? snap.label : `step ${snap.step} (${k + 1}/${checkpoints.length})`;
  const row = similarity.get(snap.step);
  const extra = row ? ["accuracy", "faithfulness"].filter((c) => row[c] !== undefined && row[c] !== null)
    .map((c) => `${c} ${fmt(row[c])}`).join(" · ") : "";
  const refSet = members(state.reference, state.budget);
  let both = 0;
  for (const e of snap.circuits[state.budget]) both += refSet[e];
  const union = snap.circuits[state.budget].length + snaps[state.reference].circuits[state.budget].length - both;
  $("status").textContent = `${D.selection} circuits, budget ${pct(D.budgets[state.budget])}: ` +
    `${b.drawn.toLocaleString("en")} edges drawn of ${E.toLocaleString("en")} · edge Jaccard vs ` +
    `${snaps[state.reference].label} ${union ? (both / union).toFixed(3) : "–"}` + (extra ? ` · ${extra}` : "");
  renderPanel();
  if (api.forceRaster) { // benchmarks: rasterise the canvases now, inside the timed handler
    for (const name of state.side ? ["a", "b"] : ["b"]) views[name].querySelector("canvas").getContext("2d").getImageData(0, 0, 1, 1);
  }
  api.lastRenderMs = performance.now() - started;
  api.renders++;
}

const timed = (handler) => (event) => {
  const started = performance.now();
  handler(event);
  api.lastHandlerMs = performance.now() - started;
};
slider.addEventListener("input", timed(() => { state.shown = checkpoints[Number(slider.value)]; render(); }));
budgetSelect.addEventListener("change", timed(() => { state.budget = Number(budgetSelect.value); render(); }));
shownSelect.addEventListener("change", timed(() => { state.shown = Number(shownSelect.value); render(); }));
referenceSelect.addEventListener("change", timed(() => { state.reference = Number(referenceSelect.value); render(); }));
criticalSelect.addEventListener("change", timed(() => { state.critical = criticalSelect.value; render(); }));
$("side").addEventListener("change", timed((ev) => { state.side = ev.target.checked; render(); }));
$("aggregate").addEventListener("change", timed((ev) => { state.aggregate = ev.target.checked; render(); }));
$("play").addEventListener("click", () => {
  if (state.playing) { clearInterval(state.playing); state.playing = null; $("play").innerHTML = "&#9654;"; return; }
  if (checkpoints.indexOf(state.shown) >= checkpoints.length - 1) state.shown = checkpoints[0];
  $("play").innerHTML = "&#10074;&#10074;";
  render();
  state.playing = setInterval(() => {
    const k = checkpoints.indexOf(state.shown);
    if (k >= checkpoints.length - 1) { clearInterval(state.playing); state.playing = null; $("play").innerHTML = "&#9654;"; return; }
    state.shown = checkpoints[k + 1];
    render();
  }, 800);
});

// ---- clicks: nodes first, then the nearest drawn edge -----------------------------------------------
function hit(name, x, y) {
  const g = geometry[name];
  if (!g) return null;
  let best = null, bestD = 7 * 7;
  for (let i = 0; i < N; i++) {
    if (state.aggregate && D.nodeHead[i] >= 0) continue;
    const d = (g.x[i] - x) ** 2 + (g.y[i] - y) ** 2;
    if (d < bestD) { bestD = d; best = i; }
  }
  if (best !== null) return { node: best, view: name };
  if (state.aggregate) return null;
  let edge = null, edgeD = 5 * 5;
  for (const e of snaps[g.si].circuits[state.budget]) {
    const x0 = g.x[SRC[e]], y0 = g.y[SRC[e]], x1 = g.x[DST[e]] + PART_SHIFT[PART[e]], y1 = g.y[DST[e]] + (PART[e] ? 3 : 0);
    const dx = x1 - x0, dy = y1 - y0, len = dx * dx + dy * dy;
    const t = len ? Math.max(0, Math.min(1, ((x - x0) * dx + (y - y0) * dy) / len)) : 0;
    const d = (x0 + t * dx - x) ** 2 + (y0 + t * dy - y) ** 2;
    if (d < edgeD) { edgeD = d; edge = e; }
  }
  return edge === null ? null : { edge, view: name };
}
for (const name of ["a", "b"]) {
  const canvas = views[name].querySelector("canvas");
  canvas.addEventListener("click", timed((event) => {
    const box = canvas.getBoundingClientRect();
    state.selection = hit(name, event.clientX - box.left, event.clientY - box.top);
    render();
  }));
}
$("panel").addEventListener("click", timed((event) => {
  const row = event.target.closest("tr.edge-row");
  if (!row) return;
  state.selection = { edge: Number(row.dataset.edge), view: state.selection ? state.selection.view : "b" };
  render();
}));
window.addEventListener("resize", () => render());

// ---- a view named in the address: #side&step=500&reference=0&budget=0.05&node=m3&critical=top-k|source
function openAt(params) {
  const byStep = (value) => snaps.findIndex((s) => String(s.step) === value || s.label === value);
  if (params.has("side")) { state.side = true; $("side").checked = true; }
  if (params.has("aggregate")) { state.aggregate = true; $("aggregate").checked = true; }
  if (byStep(params.get("step")) >= 0) state.shown = byStep(params.get("step"));
  if (byStep(params.get("reference")) >= 0) state.reference = byStep(params.get("reference"));
  const budget = D.budgets.indexOf(Number(params.get("budget")));
  if (budget >= 0) state.budget = budget;
  if (NODE.has(params.get("node"))) state.selection = { node: NODE.get(params.get("node")), view: "b" };
  const critical = params.get("critical");
  if (critical && Array.from(criticalSelect.options).some((o) => o.value === critical)) {
    state.critical = critical; criticalSelect.value = critical;
  }
}

// ---- for tests and benchmarks ------------------------------------------------------------------------
api.nodePoint = (name, view = "b") => {
  const g = geometry[view], i = NODE.get(name);
  const box = views[view].querySelector("canvas").getBoundingClientRect();
  return { x: box.left + g.x[i], y: box.top + g.y[i] };
};
api.circuitNodes = () => Array.from(nodesIn(state.shown, state.budget)).flatMap((v, i) => (v ? [D.nodes[i]] : []));
api.panelRows = () => Array.from(document.querySelectorAll("#panel tr.edge-row")).map((tr) => {
  const e = Number(tr.dataset.edge);
  return { direction: tr.dataset.direction, source: D.nodes[SRC[e]],
           destination: D.nodes[DST[e]] + (PART[e] ? `<${D.parts[PART[e]]}>` : ""), score: Number(tr.dataset.score) };
});
api.checkpoints = checkpoints.map((si) => snaps[si].step);
window.explorer = api;
openAt(new URLSearchParams(location.hash.slice(1)));
render();
api.readyMs = performance.now(); // since the navigation started
api.ready = true;
document.body.dataset.ready = "true";
