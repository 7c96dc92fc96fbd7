// The circuit explorer, drawing: one view's circuit on its canvas (see explorer.js).
// ---- drawing ----------------------------------------------------------------------------------------
const COLOURS = { pos: "31,95,191", neg: "192,57,43", added: "21,160,74", removed: "230,126,34" };
const WIDTHS = [0.6, 1, 1.5, 2, 3, 4.5];
const WIDE_LIMIT = 600, WIDE_WHEN_MANY = 200, CHUNK = 32;
const views = { a: $("view-a"), b: $("view-b") };
const geometry = {};

function canvasSize(figure) {
  const width = Math.max(320, Math.floor(figure.clientWidth || 600));
  const height = Math.max(360, Math.min(Math.max(ROWS * 22, 600), window.innerHeight - 170));
  return [width, height];
}

function widthBucket(value, top) {
  return Math.min(WIDTHS.length - 1, Math.floor(WIDTHS.length * Math.sqrt(Math.abs(value) / top)));
}

const nodeOf = (n) => (state.aggregate && D.nodeHead[n] >= 0 ? n - D.nodeHead[n] : n); // heads by layer

function edgeLines(si, bi) {
  // the circuit's edges, or with heads by layer, one line per (source group, destination group)
  const circuit = snaps[si].circuits[bi], scores = snaps[si].scores;
  if (!state.aggregate) return { edges: circuit, value: (e) => scores[e], ends: (e) => [SRC[e], DST[e], PART[e]] };
  const groups = new Map();
  for (const e of circuit) {
    const key = nodeOf(SRC[e]) * N + nodeOf(DST[e]);
    groups.set(key, (groups.get(key) || 0) + scores[e]);
  }
  const keys = Array.from(groups.keys());
  return { edges: keys, value: (k) => groups.get(k), ends: (k) => [Math.floor(k / N), k % N, 0] };
}

function drawView(name, si, ref) {
  const figure = views[name], canvas = figure.querySelector("canvas");
  const [width, height] = canvasSize(figure);
  const ratio = window.devicePixelRatio || 1;
  if (canvas.width !== width * ratio || canvas.height !== height * ratio) {
    canvas.width = width * ratio; canvas.height = height * ratio; canvas.style.height = `${height}px`;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const g = layout(width, height);
  geometry[name] = { ...g, si };
  const bi = state.budget, snap = snaps[si];
  const inRef = ref >= 0 ? members(ref, bi) : null, inShown = members(si, bi);
  const point = (n, part) => [g.x[n] + PART_SHIFT[part], g.y[n] + (part ? 3 : 0)];
  // A software-rendered canvas spends ~200 ms of CPU on thousands of long anti-aliased strokes, and far
  // more on wide strokes in one long path. So beyond WIDE_LIMIT edges, every line is rasterised here into
  // an image buffer (plotLine): the strongest WIDE_WHEN_MANY with widths, the rest 1 pixel, shaded by |score|.
  const lines = edgeLines(si, bi);
  const top = state.aggregate ? Math.max(1e-12, ...lines.edges.map((k) => Math.abs(lines.value(k)))) : scale(bi);
  const many = lines.edges.length > WIDE_LIMIT;
  const layer = many ? pixelLayer(canvas) : null;
  if (layer) criticalRows(layer, g, ratio); else drawCritical(ctx, g);
  const path = (list, w, style, dash) => {
    ctx.lineWidth = w; ctx.strokeStyle = style; ctx.setLineDash(dash || []);
    for (let i = 0; i < list.length; i += CHUNK) {
      ctx.beginPath();
      for (const e of list.slice(i, i + CHUNK)) {
        const [s, d, part] = lines.ends(e);
        const [x0, y0] = point(nodeOf(s), 0), [x1, y1] = point(nodeOf(d), part);
        ctx.moveTo(x0, y0); ctx.lineTo(x1, y1);
      }
      ctx.stroke();
    }
    ctx.setLineDash([]);
  };
  const intoLayer = (list, word, thickness) => { // lines drawn into the image buffer, allocating nothing
    const x = g.x, y = g.y;
    for (const e of list) {
      let s, d, part;
      if (state.aggregate) [s, d, part] = lines.ends(e);
      else { s = SRC[e]; d = DST[e]; part = PART[e]; }
      s = nodeOf(s); d = nodeOf(d);
      const x1 = (x[d] + PART_SHIFT[part]) * ratio, y1 = (y[d] + (part ? 3 : 0)) * ratio;
      plotLine(layer, x[s] * ratio, y[s] * ratio, x1, y1, word, thickness);
    }
  };
  let gone = [];
  if (inRef && !state.aggregate) { // edges of the compared circuit that this one lacks: dashed, or
    // with many edges an orange mark at their middle (drawn with the added ones' marks below)
    gone = Array.from(snaps[ref].circuits[bi]).filter((e) => !inShown[e]);
    if (!many) path(gone, 1, `rgba(${COLOURS.removed},0.75)`, [3, 3]);
  }
  const removed = gone.length;
  let threshold = 0;
  if (many) {
    const magnitudes = Float32Array.from(lines.edges, (e) => Math.abs(lines.value(e))).sort();
    threshold = magnitudes[magnitudes.length - WIDE_WHEN_MANY];
  }
  const buckets = new Map(), addedList = [];
  for (const e of lines.edges) {
    const value = lines.value(e), strong = Math.abs(value) >= threshold;
    const level = strong ? widthBucket(value, top) : Math.min(2, Math.floor(3 * Math.sqrt(Math.abs(value) / threshold)));
    const key = `${value >= 0 ? "pos" : "neg"}${strong ? "w" : "h"}${level}`;
    if (!buckets.has(key)) buckets.set(key, []);
    buckets.get(key).push(e);
    if (!state.aggregate && inRef && !inRef[e]) addedList.push(e);
  }
  const added = addedList.length;
  const order = Array.from(buckets.keys()).sort((a, b) => a[4] - b[4]);
  const strongKeys = order.filter((k) => k[3] === "w"), weakKeys = order.filter((k) => k[3] === "h");
  const alphaOf = (key) => (key[3] === "h" ? 0.12 + 0.14 * Number(key[4]) : 0.4 + 0.1 * Number(key[4]));
  if (layer) { // weak lines first, strong ones over them, then the marks; labels and nodes on the canvas
    for (const key of [...weakKeys, ...strongKeys]) {
      const thickness = key[3] === "h" ? 1 : Math.max(1, Math.round(WIDTHS[Number(key[4])] * ratio));
      intoLayer(buckets.get(key), tint(COLOURS[key.slice(0, 3)], alphaOf(key)), thickness);
    }
    const mark = Math.max(1, Math.round(1.5 * ratio));
    for (const [list, colour] of [[gone, COLOURS.removed], [addedList, COLOURS.added]]) {
      const word = tint(colour, 1);
      for (const e of list) { // a mark at the middle of each removed (orange) and added (green) edge
        const [x0, y0] = point(SRC[e], 0), [x1, y1] = point(DST[e], PART[e]);
        fillSquare(layer, ((x0 + x1) / 2) * ratio, ((y0 + y1) / 2) * ratio, mark, word);
      }
    }
    ctx.putImageData(layer.image, 0, 0);
    drawRowLabels(ctx, g);
  } else {
    for (const key of weakKeys) path(buckets.get(key), 1, `rgba(${COLOURS[key.slice(0, 3)]},${alphaOf(key)})`);
    drawRowLabels(ctx, g);
    for (let level = 0; level < WIDTHS.length; level++) { // a light halo under each added edge
      const list = addedList.filter((e) => widthBucket(lines.value(e), top) === level);
      if (list.length) path(list, WIDTHS[level] + 3, `rgba(${COLOURS.added},0.22)`);
    }
    for (const key of strongKeys) {
      path(buckets.get(key), WIDTHS[Number(key[4])], `rgba(${COLOURS[key.slice(0, 3)]},${alphaOf(key).toFixed(2)})`);
    }
  }
  const sel = state.selection;
  if (sel && sel.edge !== undefined && !state.aggregate) path([sel.edge], 3, "rgba(0,0,0,0.9)");
  drawNodes(ctx, g, si, ref);
  const caption = `${snap.label} · ${lines.edges.length.toLocaleString("en")} ` +
    `${state.aggregate ? "layer-group lines" : "edges"}` + (ref >= 0 ? ` · vs ${snaps[ref].label}: ` +
    `+${added} added, −${removed} removed` : "");
  figure.querySelector("figcaption").textContent = caption;
  canvas.dataset.drawnEdges = String(snap.circuits[bi].length);
  return { drawn: snap.circuits[bi].length, lines: lines.edges.length, added, removed };
}

// ---- 1-pixel lines into an image buffer (many edges) ------------------------------------------------
function pixelLayer(canvas) {
  const w = canvas.width, h = canvas.height;
  if (!canvas.layer || canvas.layer.width !== w || canvas.layer.height !== h) {
    const image = new ImageData(w, h);
    canvas.layer = { image, words: new Uint32Array(image.data.buffer), width: w, height: h };
  }
  canvas.layer.words.fill(0xffffffff); // white, opaque (RGBA bytes, little-endian words)
  return canvas.layer;
}

function criticalRows(layer, g, ratio) {
  if (!state.critical) return;
  const [rule, variant] = state.critical.split("|");
  const band = 0xff000000 | (209 << 16) | (245 << 8) | 255; // rgba(255,196,0,0.18) over white
  for (const l of ((D.critical[rule] || {})[variant]) || []) {
    const top = Math.max(0, Math.round((g.height - PAD.bottom - (2 * l + 2.5) * g.span) * ratio));
    const bottom = Math.min(layer.height, Math.round(top + 2 * g.span * ratio));
    layer.words.fill(band, top * layer.width, bottom * layer.width);
  }
}

function plotLine(layer, x0, y0, x1, y1, word, thickness = 1) {
  // a DDA in 16.16 fixed point that sets every pixel it crosses, ``thickness`` parallel copies side by side
  // (offset across the line's minor axis); the ends are clamped inside the image, so no pixel check is needed
  const { words, width, height } = layer;
  const steep = Math.abs(y1 - y0) > Math.abs(x1 - x0);
  const right = width - 1.05, bottom = height - 1.05;
  for (let t = 0; t < thickness; t++) {
    const shift = t - (thickness - 1) / 2, dx = steep ? shift : 0, dy = steep ? 0 : shift;
    const ax = Math.min(right, Math.max(0.05, x0 + dx)), ay = Math.min(bottom, Math.max(0.05, y0 + dy));
    const bx = Math.min(right, Math.max(0.05, x1 + dx)), by = Math.min(bottom, Math.max(0.05, y1 + dy));
    const steps = Math.max(1, Math.ceil(Math.max(Math.abs(bx - ax), Math.abs(by - ay))));
    const sx = Math.round(((bx - ax) / steps) * 65536), sy = Math.round(((by - ay) / steps) * 65536);
    let x = Math.round(ax * 65536), y = Math.round(ay * 65536);
    for (let k = 0; k <= steps; k++, x += sx, y += sy) words[(y >> 16) * width + (x >> 16)] = word;
  }
}

function fillSquare(layer, cx, cy, half, word) {
  const { words, width, height } = layer;
  const left = Math.max(0, Math.round(cx - half)), right = Math.min(width - 1, Math.round(cx + half));
  const top = Math.max(0, Math.round(cy - half)), bottom = Math.min(height - 1, Math.round(cy + half));
  for (let y = top; y <= bottom; y++) words.fill(word, y * width + left, y * width + right + 1);
}

function tint(colour, alpha) { // the colour at ``alpha`` over white, as an opaque RGBA word
  const [r, g, b] = colour.split(",").map((c) => Math.round(Number(c) * alpha + 255 * (1 - alpha)));
  return 0xff000000 | (b << 16) | (g << 8) | r;
}

function drawCritical(ctx, g) {
  if (!state.critical) return;
  const [rule, variant] = state.critical.split("|");
  const layers = ((D.critical[rule] || {})[variant]) || [];
  ctx.fillStyle = "rgba(255,196,0,0.18)";
  for (const layer of layers) {
    const top = g.height - PAD.bottom - (2 * layer + 2.5) * g.span;
    ctx.fillRect(0, top, g.width, 2 * g.span);
  }
}

function drawRowLabels(ctx, g) {
  ctx.fillStyle = "#777"; ctx.font = "10px system-ui, sans-serif"; ctx.textBaseline = "middle";
  const every = Math.max(1, Math.ceil(12 / g.span));
  const at = (row) => g.height - PAD.bottom - row * g.span;
  ctx.fillText("input", 2, at(0)); ctx.fillText("logits", 2, at(ROWS - 1));
  for (let layer = 0; layer < L; layer += every) {
    ctx.fillText(`a${layer}`, 2, at(2 * layer + 1));
    if (every === 1) ctx.fillText(`m${layer}`, 2, at(2 * layer + 2));
  }
}

function drawNodes(ctx, g, si, ref) {
  const inShown = nodesIn(si, state.budget), inRef = ref >= 0 ? nodesIn(ref, state.budget) : null;
  const sel = state.selection;
  const radius = Math.max(1.5, Math.min(4, g.span / 3));
  const drawn = new Set();
  for (let i = 0; i < N; i++) {
    const n = nodeOf(i);
    const key = state.aggregate ? n : i;
    const isIn = inShown[i] === 1, wasIn = inRef ? inRef[i] === 1 : isIn;
    if (state.aggregate && drawn.has(key) && !isIn) continue;
    drawn.add(key);
    const x = g.x[n], y = g.y[n];
    ctx.beginPath();
    if (D.nodeHead[i] >= 0) ctx.arc(x, y, radius, 0, 2 * Math.PI);
    else ctx.rect(x - radius * 1.4, y - radius * 1.4, radius * 2.8, radius * 2.8);
    ctx.fillStyle = isIn ? "#222" : "#d0d0d0";
    ctx.fill();
    if (isIn !== wasIn && !state.aggregate) {
      ctx.lineWidth = 1.6;
      ctx.strokeStyle = `rgb(${isIn ? COLOURS.added : COLOURS.removed})`;
      ctx.beginPath(); ctx.arc(x, y, radius + 2.5, 0, 2 * Math.PI); ctx.stroke();
    }
    if (sel && sel.node === i) {
      ctx.lineWidth = 2; ctx.strokeStyle = "#000";
      ctx.beginPath(); ctx.arc(x, y, radius + 5, 0, 2 * Math.PI); ctx.stroke();
    }
  }
}
