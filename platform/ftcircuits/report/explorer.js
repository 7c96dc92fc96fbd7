// The circuit explorer: draws a run's circuit at each checkpoint on a fixed layout (input at the bottom,
// each layer's heads then its MLP, logits at the top) on a <canvas>, marks what changed against a compared
// circuit, and shows a node's or an edge's scores over the checkpoints in a side panel. All data is the
// inline JSON the page builder (ftcircuits.report.explorer) wrote; the circuits at every budget were
// selected in Python, never here. window.explorer exposes the state for tests and benchmarks.
// This part: the data, the state, memoised circuits and the layout. The page builder joins
// explorer.js, explorer_draw.js, explorer_panel.js and explorer_controls.js inside one function scope.
const D = JSON.parse(document.getElementById("explorer-data").textContent);
const $ = (id) => document.getElementById(id);

function bytes(b64) {
  if (Uint8Array.fromBase64) return Uint8Array.fromBase64(b64);
  const text = atob(b64);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}
const typed = (Kind) => (b64) => {
  if (b64 === null || b64 === undefined) return null;
  const raw = bytes(b64);
  return new Kind(raw.buffer, raw.byteOffset, raw.byteLength / Kind.BYTES_PER_ELEMENT);
};
const f32 = typed(Float32Array), u32 = typed(Uint32Array), u16 = typed(Uint16Array), u8 = typed(Uint8Array);

const N = D.nodes.length, E = D.edges, L = D.layers, H = D.heads;
const SRC = u16(D.edgeSource), DST = u16(D.edgeDestination), PART = u8(D.edgePart);
const NODE = new Map(D.nodes.map((name, i) => [name, i]));
function circuitIndices(circuit) { // sorted edge indices, from indices or a little-endian bitmask
  if (circuit.indices !== undefined) return u32(circuit.indices);
  const bits = bytes(circuit.bits);
  let count = 0;
  for (let i = 0; i < bits.length; i++) { let b = bits[i]; while (b) { b &= b - 1; count++; } }
  const out = new Uint32Array(count);
  let k = 0;
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i];
    if (b) for (let j = 0; j < 8; j++) if (b & (1 << j)) out[k++] = 8 * i + j;
  }
  return out;
}
const snaps = D.snapshots.map((s) => ({
  label: s.label, step: s.step, scores: f32(s.scores), nodeScores: f32(s.nodeScores),
  circuits: s.circuits.map(circuitIndices), exact: f32(s.exactScores), exactNodes: f32(s.exactNodeScores),
}));
const checkpoints = snaps.map((s, i) => (s.step === null ? -1 : i)).filter((i) => i >= 0);
const similarity = new Map((D.similarity || []).map((row) => [row.step, row]));
const hasExact = snaps.some((s) => s.exact !== null);

const state = {
  shown: checkpoints[checkpoints.length - 1], reference: checkpoints[0],
  budget: D.budgets.indexOf(D.budget), side: false, critical: "", aggregate: false,
  selection: null, playing: null,
};

// ---- derived, memoised per (snapshot, budget) ------------------------------------------------------
const memo = new Map();
function cached(key, make) {
  if (!memo.has(key)) memo.set(key, make());
  return memo.get(key);
}
const members = (si, bi) => cached(`m${si}/${bi}`, () => {
  const m = new Uint8Array(E);
  for (const e of snaps[si].circuits[bi]) m[e] = 1;
  return m;
});
const nodesIn = (si, bi) => cached(`n${si}/${bi}`, () => {
  const m = new Uint8Array(N);
  for (const e of snaps[si].circuits[bi]) { m[SRC[e]] = 1; m[DST[e]] = 1; }
  return m;
});
const scale = (bi) => cached(`s${bi}`, () => {
  let top = 0;
  for (const s of snaps) for (const e of s.circuits[bi]) top = Math.max(top, Math.abs(s.scores[e]));
  return top || 1;
});

// ---- layout: every node has a fixed place for a given canvas size -----------------------------------
const ROWS = 2 * L + 2; // input, per layer heads then MLP, logits
const PAD = { left: 40, right: 12, top: 14, bottom: 14 };
function rowOf(i) {
  const layer = D.nodeLayer[i];
  if (layer < 0) return 0;
  if (layer >= L) return ROWS - 1;
  return 2 * layer + (D.nodeHead[i] >= 0 ? 1 : 2);
}
function layout(width, height) {
  const x = new Float32Array(N), y = new Float32Array(N);
  const span = (height - PAD.top - PAD.bottom) / (ROWS - 1);
  const inner = width - PAD.left - PAD.right;
  for (let i = 0; i < N; i++) {
    y[i] = height - PAD.bottom - rowOf(i) * span;
    const head = D.nodeHead[i];
    x[i] = PAD.left + (head >= 0 && !state.aggregate ? (head + 0.5) / H : 0.5) * inner;
  }
  return { x, y, span, width, height };
}
const PART_SHIFT = [0, -2, 0, 2];
