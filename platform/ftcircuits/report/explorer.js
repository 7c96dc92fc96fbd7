// The circuit explorer: draws a run's circuit at each checkpoint on a fixed layout (input at the bottom,
// each layer's heads then its MLP, logits at the top) on a <canvas>, marks what changed against a compared
// circuit, and shows a node's or an edge's scores over the checkpoints in a side panel. All data is the
// inline JSON the page builder (ftcircuits.report.explorer) wrote; the circuits at every budget were
// selected in Python, never here. window.explorer exposes the state for tests and benchmarks.
(function () {
  "use strict";
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
    // more on wide strokes in one long path. So beyond WIDE_LIMIT edges, the strongest WIDE_WHEN_MANY get
    // widths (in short paths) and the rest are 1-pixel lines rasterised here into an image, shaded by |score|.
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
    const hairlines = (list, colour, alpha) => {
      if (!layer) { path(list, 1, `rgba(${colour},${alpha})`); return; }
      const word = tint(colour, alpha);
      for (const e of list) {
        const [s, d, part] = lines.ends(e);
        const [x0, y0] = point(nodeOf(s), 0), [x1, y1] = point(nodeOf(d), part);
        plotLine(layer, x0 * ratio, y0 * ratio, x1 * ratio, y1 * ratio, word);
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
    const order = Array.from(buckets.keys()).sort((a, b) => (a[3] === b[3] ? a[4] - b[4] : a[3] === "h" ? -1 : 1));
    for (const key of order.filter((k) => k[3] === "h")) {
      hairlines(buckets.get(key), COLOURS[key.slice(0, 3)], 0.12 + 0.14 * Number(key[4]));
    }
    if (layer) ctx.putImageData(layer.image, 0, 0);
    drawRowLabels(ctx, g);
    if (!many) { // a light halo under each added edge, wider than the edge
      for (let level = 0; level < WIDTHS.length; level++) {
        const list = addedList.filter((e) => widthBucket(lines.value(e), top) === level);
        if (list.length) path(list, WIDTHS[level] + 3, `rgba(${COLOURS.added},0.22)`);
      }
    }
    for (const key of order.filter((k) => k[3] === "w")) {
      const level = Number(key[4]);
      path(buckets.get(key), WIDTHS[level], `rgba(${COLOURS[key.slice(0, 3)]},${(0.4 + 0.1 * level).toFixed(2)})`);
    }
    if (many) { // thousands: a mark at the middle of each added (green) and removed (orange) edge
      for (const [list, colour] of [[gone, COLOURS.removed], [addedList, COLOURS.added]]) {
        ctx.fillStyle = `rgb(${colour})`;
        for (const e of list) {
          const [x0, y0] = point(SRC[e], 0), [x1, y1] = point(DST[e], PART[e]);
          ctx.fillRect((x0 + x1) / 2 - 1.5, (y0 + y1) / 2 - 1.5, 3, 3);
        }
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

  function plotLine(layer, x0, y0, x1, y1, word) {
    // a DDA in 16.16 fixed point that sets every pixel it crosses (weak lines first, strong ones over them)
    const { words, width, height } = layer;
    const steps = Math.max(1, Math.ceil(Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0))));
    const sx = Math.round(((x1 - x0) / steps) * 65536), sy = Math.round(((y1 - y0) / steps) * 65536);
    let x = Math.round(x0 * 65536), y = Math.round(y0 * 65536);
    for (let k = 0; k <= steps; k++, x += sx, y += sy) {
      const px = x >> 16, py = y >> 16;
      if (px >= 0 && py >= 0 && px < width && py < height) words[py * width + px] = word;
    }
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

  // ---- the panel: a node's or an edge's edges and scores ----------------------------------------------
  const fmt = (v) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toPrecision(4));
  const esc = (text) => String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  const edgeName = (e) => `${D.nodes[SRC[e]]} → ${D.nodes[DST[e]]}${PART[e] ? `<${D.parts[PART[e]]}>` : ""}`;

  function lineChart(series, marks) {
    // series: [{label, values (per checkpoint), dashed}], marks: optional per-checkpoint in-circuit flags
    const w = 360, h = 120, pad = 26;
    const all = series.flatMap((s) => s.values).filter((v) => Number.isFinite(v));
    if (!all.length) return "";
    let lo = Math.min(0, ...all), hi = Math.max(0, ...all);
    if (hi === lo) hi = lo + 1;
    const n = checkpoints.length;
    const px = (k) => pad + (n > 1 ? (k * (w - pad - 8)) / (n - 1) : (w - pad) / 2);
    const py = (v) => h - 14 - ((v - lo) * (h - 24)) / (hi - lo);
    const palette = ["#1f5fbf", "#c0392b", "#15a04a", "#8e44ad", "#e67e22", "#16a085", "#7f8c8d", "#2c3e50"];
    let svg = `<svg width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" role="img">`;
    svg += `<line x1="${pad}" x2="${w - 4}" y1="${py(0)}" y2="${py(0)}" stroke="#bbb"/>`;
    svg += `<text x="2" y="12" font-size="9">${fmt(hi)}</text><text x="2" y="${h - 14}" font-size="9">${fmt(lo)}</text>`;
    checkpoints.forEach((si, k) => {
      svg += `<text x="${px(k)}" y="${h - 2}" font-size="9" text-anchor="middle">${snaps[si].step}</text>`;
    });
    series.forEach((s, j) => {
      const colour = palette[j % palette.length];
      const pts = s.values.map((v, k) => `${px(k).toFixed(1)},${py(v).toFixed(1)}`).join(" ");
      svg += `<polyline fill="none" stroke="${colour}" stroke-width="1.5"${s.dashed ? ' stroke-dasharray="4 3"' : ""} points="${pts}"><title>${esc(s.label)}</title></polyline>`;
      if (marks) {
        s.values.forEach((v, k) => {
          svg += `<circle cx="${px(k)}" cy="${py(v)}" r="3.5" fill="${marks[k] ? colour : "#fff"}" stroke="${colour}"/>`;
        });
      }
    });
    return svg + "</svg>";
  }

  function edgeRows(list, si, direction) {
    const snap = snaps[si];
    const head = `<tr><th>${direction === "in" ? "from" : "to"}</th><th>score</th>${hasExact ? "<th>exact</th>" : ""}</tr>`;
    const rows = list.map((e) => {
      const other = direction === "in" ? D.nodes[SRC[e]] : D.nodes[DST[e]] + (PART[e] ? `<${D.parts[PART[e]]}>` : "");
      const into = direction === "in" && PART[e] ? ` (${D.parts[PART[e]]})` : "";
      return `<tr class="edge-row" data-edge="${e}" data-direction="${direction}" data-score="${snap.scores[e]}">` +
        `<td>${esc(other + into)}</td><td class="num">${fmt(snap.scores[e])}</td>` +
        (hasExact ? `<td class="num">${snap.exact ? fmt(snap.exact[e]) : "–"}</td>` : "") + "</tr>";
    });
    return `<table>${head}${rows.join("")}</table>`;
  }

  function nodePanel(node, si) {
    const snap = snaps[si], circuit = snap.circuits[state.budget];
    const incoming = [], outgoing = [];
    for (const e of circuit) {
      if (DST[e] === node) incoming.push(e);
      if (SRC[e] === node) outgoing.push(e);
    }
    const byMagnitude = (a, b) => Math.abs(snap.scores[b]) - Math.abs(snap.scores[a]);
    incoming.sort(byMagnitude); outgoing.sort(byMagnitude);
    const exact = snap.exactNodes ? ` · exact ${fmt(snap.exactNodes[node])}` : "";
    const charted = [...incoming, ...outgoing].sort(byMagnitude).slice(0, 6);
    const series = charted.map((e) => ({ label: edgeName(e), values: checkpoints.map((c) => snaps[c].scores[e]) }));
    series.push({ label: `${D.nodes[node]} node score`, dashed: true, values: checkpoints.map((c) => snaps[c].nodeScores[node]) });
    return `<h2>${esc(D.nodes[node])}</h2><p>at ${esc(snap.label)}, budget ${pct(D.budgets[state.budget])}: ` +
      `node score <b data-node-score="${snap.nodeScores[node]}">${fmt(snap.nodeScores[node])}</b>${exact}</p>` +
      `<h3>scores over checkpoints (its largest edges; dashed: node score)</h3>${lineChart(series)}` +
      `<h3>incoming circuit edges (${incoming.length})</h3>${edgeRows(incoming, si, "in")}` +
      `<h3>outgoing circuit edges (${outgoing.length})</h3>${edgeRows(outgoing, si, "out")}`;
  }

  function edgePanel(e) {
    const inCircuit = checkpoints.map((c) => members(c, state.budget)[e] === 1);
    const chart = lineChart([{ label: edgeName(e), values: checkpoints.map((c) => snaps[c].scores[e]) }], inCircuit);
    const rows = snaps.map((s, si) => `<tr class="snapshot-row" data-snapshot="${si}" data-score="${s.scores[e]}" ` +
      `data-in-circuit="${members(si, state.budget)[e]}"><td>${esc(s.label)}</td>` +
      `<td class="num">${fmt(s.scores[e])}</td>${hasExact ? `<td class="num">${s.exact ? fmt(s.exact[e]) : "–"}</td>` : ""}` +
      `<td>${members(si, state.budget)[e] ? "yes" : "no"}</td></tr>`);
    return `<h2>${esc(edgeName(e))}</h2><p>budget ${pct(D.budgets[state.budget])}; filled dots: in the circuit</p>` +
      chart + `<table><tr><th>circuit</th><th>score</th>${hasExact ? "<th>exact</th>" : ""}<th>in circuit</th></tr>` +
      rows.join("") + "</table>";
  }

  function renderPanel() {
    const panel = $("panel"), sel = state.selection;
    if (!sel) { panel.innerHTML = "<p>Click a node or an edge.</p>"; return; }
    const si = sel.view === "a" ? state.reference : state.shown;
    panel.innerHTML = sel.node !== undefined ? nodePanel(sel.node, si) : edgePanel(sel.edge);
  }

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
})();
