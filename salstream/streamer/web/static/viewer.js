// salstream viewer: frames and maps arrive as separate WebSocket messages; the heatmap is
// coloured and laid over the frame here, so opacity and colormap change without the server.
"use strict";

const COLORMAPS = {
  // Each maps x in [0, 1] to [r, g, b] in [0, 1].
  jet: (x) => [1.5 - Math.abs(4 * x - 3), 1.5 - Math.abs(4 * x - 2), 1.5 - Math.abs(4 * x - 1)],
  // Turbo, by its published polynomial fit.
  turbo: (x) => [
    0.13572138 + x * (4.6153926 + x * (-42.66032258 + x * (132.13108234 + x * (-152.94239396 + x * 59.28637943)))),
    0.09140261 + x * (2.19418839 + x * (4.84296658 + x * (-14.18503333 + x * (4.27729857 + x * 2.82956604)))),
    0.1066733 + x * (12.64194608 + x * (-60.58204836 + x * (110.36276771 + x * (-89.90310912 + x * 27.34824973)))),
  ],
  hot: (x) => [3 * x, 3 * x - 1, 3 * x - 2],
  gray: (x) => [x, x, x],
};
const clamp01 = (v) => Math.min(1, Math.max(0, v));
const LUTS = {};
for (const [name, f] of Object.entries(COLORMAPS)) {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const rgb = f(i / 255);
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = Math.round(255 * clamp01(rgb[c]));
  }
  LUTS[name] = lut;
}

const $ = (id) => document.getElementById(id);
const ui = {
  opacity: $("opacity"), colormap: $("colormap"), stretch: $("stretch"), show: $("show"), pause: $("pause"),
  snapshot: $("snapshot"), picker: $("picker"), tiles: $("tiles"), waiting: $("waiting"),
  connection: $("connection"), chart: $("chart"), chartTitle: $("chart-title"),
};

// What the page shows, readable by scripts and tests (window.salstreamViewer).
const state = {
  connected: false, paused: false, selected: "*", streams: [], drawn: {}, shown: {}, stats: {},
  history: {}, received: { frames: 0, maps: 0 }, reconnects: 0,
};
window.salstreamViewer = state;

const tiles = new Map();     // stream id -> tile

function makeTile(sid) {
  const fig = document.createElement("figure");
  fig.className = "tile";
  fig.dataset.stream = sid;
  const canvas = document.createElement("canvas");
  canvas.width = 640; canvas.height = 360;
  canvas.title = "click: show only this stream";
  canvas.addEventListener("click", () => select(state.selected === sid ? "*" : sid));
  const cap = document.createElement("figcaption");
  fig.append(canvas, cap);
  ui.tiles.append(fig);
  const tile = {
    sid, fig, canvas, cap, ctx: canvas.getContext("2d"),
    heat: document.createElement("canvas"),
    frames: [],          // recent decoded previews: {index, bitmap}, newest last
    map: null,           // {info, data}
    pending: null,       // newest map received while paused
    dirty: false,
  };
  tiles.set(sid, tile);
  return tile;
}

function tileFor(sid) { return tiles.get(sid) || makeTile(sid); }

// ------------------------------------------------------------------ drawing
function frameFor(tile, index) {
  // The preview of the map's own frame, else the newest one before it, else the newest.
  let best = null;
  for (const f of tile.frames) if (f.index <= index && (!best || f.index > best.index)) best = f;
  return best || tile.frames[tile.frames.length - 1] || null;
}

function draw(tile) {
  const { ctx, canvas } = tile;
  const m = tile.map;
  if (!m) return;
  const frame = m.frame;
  let w, h;
  if (frame) { w = frame.bitmap.width; h = frame.bitmap.height; } else {
    const src = m.info.source_shape || m.info.shape;       // no previews (--no-frames): source aspect
    const s = Math.min(1, 640 / Math.max(src[0], src[1]));
    w = Math.max(1, Math.round(src[1] * s)); h = Math.max(1, Math.round(src[0] * s));
  }
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  ctx.globalAlpha = 1;
  if (frame) ctx.drawImage(frame.bitmap, 0, 0, w, h); else { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, w, h); }
  // The heatmap at model resolution: colour from the LUT, opacity × value as alpha (as the
  // server-side overlay does), then scaled smoothly over the frame.
  const [rows, cols] = m.info.shape;
  const heat = tile.heat;
  if (heat.width !== cols || heat.height !== rows) { heat.width = cols; heat.height = rows; }
  const hctx = heat.getContext("2d");
  const img = hctx.createImageData(cols, rows);
  const lut = LUTS[ui.colormap.value] || LUTS.jet;
  const opacity = Number(ui.opacity.value);
  // "spread": where the K draws of the map disagree (published with --samples K), instead of the map.
  const layer = ui.show.value === "spread" && m.spread ? "spread" : "map";
  const values = layer === "spread" ? m.spread : m.data;
  let lo = 0, hi = 255;
  if (ui.stretch.checked) {
    lo = 255; hi = 0;
    for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
  }
  const span = hi > lo ? 255 / (hi - lo) : 0;
  for (let i = 0; i < values.length; i++) {
    const v = span ? Math.round((values[i] - lo) * span) : 0;
    img.data[i * 4] = lut[v * 3]; img.data[i * 4 + 1] = lut[v * 3 + 1]; img.data[i * 4 + 2] = lut[v * 3 + 2];
    img.data[i * 4 + 3] = Math.round(opacity * v);
  }
  hctx.putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(heat, 0, 0, w, h);
  state.drawn[tile.sid] = (state.drawn[tile.sid] || 0) + 1;
  state.shown[tile.sid] = {
    frame_index: m.info.frame_index, pts: m.info.pts, mode: m.info.mode, flags: m.info.flags,
    frame_matched: !!frame && frame.index === m.info.frame_index, width: canvas.width, height: canvas.height,
    layer, has_spread: !!m.spread,
  };
  caption(tile);
}

function caption(tile) {
  const m = tile.map, s = state.stats[tile.sid];
  const parts = [`<span class="sid">stream ${esc(tile.sid)}</span>`];
  if (m) {
    parts.push(`frame ${m.info.frame_index}`, `${Number(m.info.pts).toFixed(2)} s`);
    const badges = [`<span class="mode ${esc(m.info.mode)}">${modeName(m.info.mode)}</span>`];
    for (const [k, v] of Object.entries(m.info.flags || {})) {
      if (v) badges.push(`<span class="flag">${esc(k.replace(/_/g, " "))}${v === true ? "" : " " + esc(v)}</span>`);
    }
    if (m.spread) {
      badges.push(`<span class="flag">${ui.show.value === "spread" ? "spread of" : "mean of"} ${esc(m.info.samples)} draws</span>`);
    }
    parts.push(badges.join(" "));
  }
  if (s) {
    parts.push(`${s.maps_per_s.toFixed(1)} maps/s`);
    if (s.p50_ms !== null) parts.push(`p50 ${s.p50_ms.toFixed(0)} ms · p95 ${s.p95_ms.toFixed(0)} ms`);
    if (s.stale) parts.push(`<span class="stale">no map for ${s.age_s.toFixed(0)} s</span>`);
  }
  if (state.paused) parts.push('<span class="flag">paused</span>');
  tile.cap.innerHTML = parts.map((p) => `<span>${p}</span>`).join("");
}

const modeName = (m) => ({ av: "audio-visual", video: "video only", audio: "audio only" })[m] || esc(m);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

let scheduled = false;
function redrawSoon() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    for (const t of tiles.values()) if (t.dirty) { t.dirty = false; draw(t); }
  });
}

// ------------------------------------------------------------------ messages
function onFrame(info, jpeg) {
  state.received.frames++;
  const tile = tileFor(info.stream);
  createImageBitmap(new Blob([jpeg], { type: "image/jpeg" })).then((bitmap) => {
    const frame = { index: info.frame_index, bitmap };
    tile.frames.push(frame);
    while (tile.frames.length > 4) {
      const old = tile.frames.shift();
      if (!tile.map || tile.map.frame !== old) old.bitmap.close();
    }
    // The preview usually arrives (decoded) just after its map was taken: attach it.
    if (!state.paused && tile.map && tile.map.info.frame_index === info.frame_index) {
      tile.map.frame = frame; tile.dirty = true; redrawSoon();
    }
  }).catch(() => {});
}

function onMap(info, payload) {
  state.received.maps++;
  const tile = tileFor(info.stream);
  const n = info.shape[0] * info.shape[1];
  // With --samples K the payload is the map, then its per-pixel spread (same size).
  const data = info.spread ? payload.subarray(0, n) : payload;
  const spread = info.spread && payload.length === 2 * n ? payload.subarray(n) : null;
  if (state.paused) { tile.pending = { info, data, spread }; return; }
  if (tile.map && info.frame_index < tile.map.info.frame_index - 1) {
    // The publisher restarted: frame indices begin again and the old previews no longer belong.
    tile.frames = tile.frames.filter((f) => f.index <= info.frame_index);
  }
  tile.map = { info, data, spread, frame: frameFor(tile, info.frame_index) };
  tile.dirty = true;
  redrawSoon();
}

function onStreams(list) {
  state.streams = list;
  for (const sid of list) ui.tiles.append(tileFor(sid).fig);      // tiles in stream order
  ui.waiting.hidden = list.length > 0;
  for (const b of [...ui.picker.querySelectorAll("button")]) if (b.dataset.stream !== "*") b.remove();
  for (const sid of list) {
    const b = document.createElement("button");
    b.type = "button"; b.dataset.stream = sid; b.textContent = `stream ${sid}`;
    ui.picker.append(b);
  }
  applySelection();
}

function onStats(msg) {
  state.stats = msg.streams || {};
  const t = Date.now() / 1000;
  for (const [sid, s] of Object.entries(state.stats)) {
    const h = state.history[sid] || (state.history[sid] = []);
    h.push({ t, rate: s.maps_per_s, p50: s.stale ? null : s.p50_ms, p95: s.stale ? null : s.p95_ms });
    while (h.length && t - h[0].t > 60) h.shift();
  }
  for (const tile of tiles.values()) caption(tile);
  const stale = Object.values(state.stats).length && Object.values(state.stats).every((s) => s.stale);
  setConnection(stale ? "no maps: publisher stopped?" : "live", stale ? "warn" : "ok");
  drawChart();
}

// ------------------------------------------------------------------ stream picker
function select(sid) {
  state.selected = sid;
  applySelection();
  send({ type: "select", streams: sid === "*" ? null : [sid] });
}

function applySelection() {
  const sel = state.selected;
  ui.tiles.className = sel === "*" ? "grid" : "single";
  for (const t of tiles.values()) t.fig.classList.toggle("hidden", sel !== "*" && t.sid !== sel);
  for (const b of ui.picker.querySelectorAll("button")) b.classList.toggle("active", b.dataset.stream === sel);
  drawChart();
}

ui.picker.addEventListener("click", (e) => {
  const b = e.target.closest("button");
  if (b) select(b.dataset.stream);
});

// ------------------------------------------------------------------ controls
function redrawAll() { for (const t of tiles.values()) if (t.map) { t.dirty = true; } redrawSoon(); }
ui.opacity.addEventListener("input", redrawAll);
ui.colormap.addEventListener("change", redrawAll);
ui.stretch.addEventListener("change", redrawAll);
ui.show.addEventListener("change", redrawAll);
ui.pause.addEventListener("click", () => {
  state.paused = !state.paused;
  ui.pause.textContent = state.paused ? "resume" : "pause";
  ui.pause.classList.toggle("active", state.paused);
  if (!state.paused) {
    for (const t of tiles.values()) {
      if (t.pending) { t.map = { ...t.pending, frame: frameFor(t, t.pending.info.frame_index) }; t.pending = null; }
    }
  }
  redrawAll();
});
ui.snapshot.addEventListener("click", () => {
  for (const t of tiles.values()) {
    if (t.fig.classList.contains("hidden") || !t.map) continue;
    t.canvas.toBlob((blob) => {
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = `salstream-stream${t.sid}-frame${t.map.info.frame_index}.png`;
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    }, "image/png");
  }
});

// ------------------------------------------------------------------ chart
function drawChart() {
  const c = ui.chart, ctx = c.getContext("2d");
  const w = (c.width = c.clientWidth || c.width), h = c.height;
  ctx.clearRect(0, 0, w, h);
  const sid = state.selected !== "*" ? state.selected : state.streams[0];
  ui.chartTitle.textContent = sid === undefined ? "maps/s and capture→publish latency"
    : `stream ${sid}: maps/s and capture→publish latency, last 60 s`;
  const hist = state.history[sid] || [];
  if (!hist.length) return;
  const now = Date.now() / 1000, pad = 34;
  const x = (t) => pad + (w - 2 * pad) * (1 - (now - t) / 60);
  const maxRate = Math.max(1, ...hist.map((p) => p.rate)) * 1.15;
  const maxMs = Math.max(10, ...hist.map((p) => p.p95 || 0)) * 1.15;
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#9aa0a6";
  ctx.fillText(`${maxRate.toFixed(maxRate < 10 ? 1 : 0)}/s`, 4, 12); ctx.fillText("0", 4, h - 4);
  ctx.fillText(`${maxMs.toFixed(0)} ms`, w - pad + 2, 12);
  const line = (key, max, colour) => {
    ctx.strokeStyle = colour; ctx.lineWidth = 2; ctx.beginPath();
    let open = false;
    for (const p of hist) {
      if (p[key] === null || p[key] === undefined) { open = false; continue; }
      const px = x(p.t), py = h - 6 - (h - 18) * (p[key] / max);
      if (open) ctx.lineTo(px, py); else ctx.moveTo(px, py);
      open = true;
    }
    ctx.stroke();
  };
  line("rate", maxRate, "#5ab4ff");
  line("p50", maxMs, "#5ad17a");
  line("p95", maxMs, "#ff6b5a");
}

// ------------------------------------------------------------------ connection
let ws = null, retry = 500;
function send(msg) { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg)); }

function setConnection(text, cls) {
  ui.connection.textContent = text;
  ui.connection.className = `badge ${cls || ""}`;
}

function connect() {
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    state.connected = true; retry = 500;
    setConnection("connected", "ok");
    if (state.selected !== "*") send({ type: "select", streams: [state.selected] });
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      const msg = JSON.parse(ev.data);
      if (msg.type === "streams") onStreams(msg.streams);
      else if (msg.type === "stats") onStats(msg);
      return;
    }
    const view = new DataView(ev.data);
    const n = view.getUint32(0);
    const info = JSON.parse(new TextDecoder().decode(new Uint8Array(ev.data, 4, n)));
    const payload = new Uint8Array(ev.data, 4 + n);
    if (info.type === "frame") onFrame(info, payload);
    else if (info.type === "map") onMap(info, payload);
  };
  ws.onclose = () => {
    state.connected = false; state.reconnects++;
    setConnection("viewer server unreachable: retrying", "warn");
    setTimeout(connect, retry);
    retry = Math.min(5000, retry * 2);
  };
}

window.addEventListener("resize", drawChart);
connect();
