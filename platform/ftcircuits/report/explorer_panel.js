// The circuit explorer, the side panel: a node's or an edge's scores (see explorer.js).
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
