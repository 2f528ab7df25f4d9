// The live view of programs: polls this server's /programs?live=1, /programs/events and
// /metrics at most once a second and draws them. Ids and tool names come from agents: they
// are only ever set as text (textContent, canvas fillText), never parsed as HTML.
"use strict";

const POLL_MS = 1000;
const WINDOW_S = 300;
const MAX_EVENTS = 20000;
const ROW_PX = 14;
const MAX_ENDED = 60;
const KEY_NAME = "thunderagent-view-key";
const COLORS = ["#4f9cf0", "#3fbf7f", "#e0a03a", "#9b7be0", "#e05a5a", "#45b5c4", "#c4c445",
  "#d46fb0", "#7f8cff", "#8bd17c", "#f08f5f", "#6fa8a0"];
const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

const state = {
  since: 0, events: [], programs: [], body: null, samples: [], polling: false,
  lastRefreshMs: null, order: new Map(),
};

function key() { return sessionStorage.getItem(KEY_NAME); }

async function get(path) {
  const headers = {};
  if (key()) headers.Authorization = "Bearer " + key();
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401 || response.status === 403) throw new NeedKey();
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return path.startsWith("/metrics") ? response.text() : response.json();
}

class NeedKey extends Error {}

function setStatus(text, bad) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.className = bad ? "bad" : "";
}

// ---- data ---------------------------------------------------------------------------------

function metricValue(text, name, label) {
  let total = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    if (label && !line.includes(label)) continue;
    const value = parseFloat(line.slice(line.lastIndexOf(" ") + 1));
    if (!Number.isNaN(value)) total += value;
  }
  return total;
}

function sample(text) {
  const now = Date.now() / 1000;
  state.samples.push({
    t: now,
    cached: metricValue(text, "thunderagent_prefill_tokens_total", 'kind="cached"'),
    computed: metricValue(text, "thunderagent_prefill_tokens_total", 'kind="computed"'),
    evicted: metricValue(text, "thunderagent_missed_tokens_total", 'cause="evicted"'),
    changed: metricValue(text, "thunderagent_missed_tokens_total", 'cause="changed"'),
  });
  while (state.samples.length && state.samples[0].t < now - WINDOW_S) state.samples.shift();
}

async function poll() {
  // answered at once when something happened, else after a second: news shows at once
  const page = await get("/programs/events?since=" + state.since + "&limit=5000&wait=1");
  const started = performance.now();
  const [body, metrics] = await Promise.all([get("/programs?live=1"), get("/metrics")]);
  state.body = body;
  state.programs = body.programs || [];
  for (const event of page.events) state.events.push(event);
  if (state.events.length > MAX_EVENTS) state.events.splice(0, state.events.length - MAX_EVENTS);
  state.since = page.next;
  sample(metrics);
  render();
  state.lastRefreshMs = performance.now() - started;
  window.thunderagentLastRefreshMs = state.lastRefreshMs;
  window.thunderagentRefreshes = (window.thunderagentRefreshes || 0) + 1;
  setStatus("live, " + state.programs.length + " programs, refreshed in "
    + state.lastRefreshMs.toFixed(0) + " ms" + (page.missed ? " (" + page.missed
    + " older events were dropped by the server)" : ""), false);
}

async function loop() {
  if (state.polling) return;
  state.polling = true;
  const started = Date.now();
  try {
    await poll();
  } catch (error) {
    if (error instanceof NeedKey) {
      document.getElementById("keyform").className = "shown";
      setStatus(key() ? "the API key was refused" : "this server needs its API key", true);
      state.polling = false;
      return;  // resumes when a key is given
    }
    setStatus("cannot reach the server: " + error.message, true);
  }
  state.polling = false;
  setTimeout(loop, Math.max(0, POLL_MS - (Date.now() - started)));
}

// ---- drawing ------------------------------------------------------------------------------

function canvas(id, height) {
  const el = document.getElementById(id);
  const ratio = window.devicePixelRatio || 1;
  const width = el.clientWidth;
  if (height) el.style.height = height + "px";
  const h = height || el.clientHeight;
  el.width = Math.round(width * ratio);
  el.height = Math.round(h * ratio);
  const ctx = el.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, h);
  ctx.font = "11px system-ui, sans-serif";
  return [ctx, width, h];
}

function colorOf(programId) {
  if (!state.order.has(programId)) state.order.set(programId, state.order.size);
  return COLORS[state.order.get(programId) % COLORS.length];
}

function fmt(n) {
  if (n === null || n === undefined) return "";
  if (typeof n !== "number") return String(n);
  return n >= 10000 ? (n / 1000).toFixed(1) + "k" : String(Math.round(n));
}

function render() {
  renderStats();
  renderPool();
  renderRates();
  renderTimeline();
  renderTable();
  renderLog();
}

function renderStats() {
  const programs = state.programs;
  const count = (status) => programs.filter((p) => p.status === status).length;
  const sched = (state.body && state.body.scheduler) || {};
  document.getElementById("n-live").textContent = String(programs.length);
  document.getElementById("n-paused").textContent = String(count("paused"));
  document.getElementById("n-held").textContent = fmt(sched.held_now || 0);
  document.getElementById("n-demand").textContent = fmt(state.body.demand_tokens || 0);
}

function renderPool() {
  const [ctx, width] = canvas("pool", 120);
  const sched = state.body.scheduler || {};
  const capacity = sched.capacity_tokens || Math.max(1, state.body.resident_tokens || 1);
  const scale = (tokens) => Math.min(width, (tokens / capacity) * width);
  const bars = [["resident", "resident_tokens", 8], ["host tier", "host_tokens", 44]];
  const top = [...state.programs].sort((a, b) => (b.resident_tokens || 0) - (a.resident_tokens || 0));
  for (const [label, field, y] of bars) {
    let x = 0;
    for (const p of top.slice(0, 24)) {
      const w = scale(p[field] || 0);
      if (w <= 0) continue;
      ctx.fillStyle = colorOf(p.program_id);
      ctx.fillRect(x, y + 12, Math.max(1, w - 1), 16);
      x += w;
    }
    const rest = top.slice(24).reduce((sum, p) => sum + (p[field] || 0), 0);
    ctx.fillStyle = css("--dim");
    ctx.fillRect(x, y + 12, scale(rest), 16);
    ctx.fillText(label + " tokens by program", 0, y + 8);
  }
  // the scheduler's demand footprint against its watermarks
  const y = 80;
  ctx.fillStyle = css("--line");
  ctx.fillRect(0, y + 12, width, 16);
  ctx.fillStyle = css("--reason");
  ctx.fillRect(0, y + 12, scale(sched.footprint_tokens || 0), 16);
  ctx.fillStyle = css("--text");
  ctx.fillText("demand footprint " + fmt(sched.footprint_tokens || 0) + " of "
    + fmt(capacity) + " (low / high watermarks)", 0, y + 8);
  for (const mark of [sched.low_tokens, sched.high_tokens]) {
    if (!mark) continue;
    ctx.fillStyle = css("--pause");
    ctx.fillRect(scale(mark), y + 10, 2, 20);
  }
  const legend = document.getElementById("pool-legend");
  legend.replaceChildren(...top.slice(0, 8).filter((p) => p.resident_tokens || p.host_tokens)
    .map((p) => {
      const span = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = colorOf(p.program_id);
      span.append(swatch, document.createTextNode(p.program_id));
      return span;
    }));
}

function renderRates() {
  const [ctx, width, height] = canvas("rates", 160);
  const s = state.samples;
  if (s.length < 2) return;
  const now = s[s.length - 1].t;
  const points = [];
  for (let i = 1; i < s.length; i++) {
    const dt = Math.max(0.001, s[i].t - s[i - 1].t);
    const cached = s[i].cached - s[i - 1].cached;
    const computed = s[i].computed - s[i - 1].computed;
    points.push({
      t: s[i].t, hit: cached + computed > 0 ? cached / (cached + computed) : null,
      evicted: (s[i].evicted - s[i - 1].evicted) / dt, changed: (s[i].changed - s[i - 1].changed) / dt,
    });
  }
  const peak = Math.max(1, ...points.map((p) => Math.max(p.evicted, p.changed)));
  const x = (t) => width - ((now - t) / WINDOW_S) * width;
  const line = (color, value) => {
    ctx.strokeStyle = color;
    ctx.beginPath();
    let started = false;
    for (const p of points) {
      const v = value(p);
      if (v === null) continue;
      const y = height - 14 - v * (height - 24);
      if (started) ctx.lineTo(x(p.t), y); else ctx.moveTo(x(p.t), y);
      started = true;
    }
    ctx.stroke();
  };
  line(css("--act"), (p) => p.hit);
  line(css("--pause"), (p) => p.evicted / peak);
  line(css("--held"), (p) => p.changed / peak);
  ctx.fillStyle = css("--dim");
  ctx.fillText("recompute peak " + fmt(peak) + " tokens/s", 4, 10);
}

// segments of each program over the window, from the events (and the live records for
// programs whose events are older than the server's ring)
function timelines(now) {
  const rows = new Map();
  const row = (pid) => {
    if (!rows.has(pid)) rows.set(pid, { pid, spans: [], marks: [], phase: null, since: null, paused: null, ended: null, held: null, last: 0 });
    return rows.get(pid);
  };
  const close = (r, t) => {
    if (r.phase) r.spans.push({ kind: r.phase, from: r.since, to: t, tool: r.tool });
    r.phase = null;
  };
  for (const e of state.events) {
    const r = row(e.program_id);
    r.last = e.t;
    if (e.kind === "call") {
      close(r, e.t);
      if (r.held !== null) r.spans.push({ kind: "held", from: r.held, to: e.t });
      r.held = null; r.phase = "reasoning"; r.since = e.t; r.tool = null; r.ended = null;
    }
    else if (e.kind === "finish") { close(r, e.t); r.phase = "acting"; r.since = e.t; }
    else if (e.kind === "tool" && e.event === "start") { r.tool = e.tool || null; }
    else if (e.kind === "pause") { r.paused = e.t; }
    else if (e.kind === "resume") { if (r.paused !== null) r.spans.push({ kind: "paused", from: r.paused, to: e.t }); r.paused = null; }
    else if (e.kind === "held") { if (r.held === null) r.held = e.t; }
    else if (e.kind === "end") {
      close(r, e.t);
      if (r.paused !== null) r.spans.push({ kind: "paused", from: r.paused, to: e.t });
      if (r.held !== null) r.spans.push({ kind: "held", from: r.held, to: e.t });
      r.paused = null; r.held = null; r.ended = e.t; r.marks.push({ kind: "end", t: e.t, cause: e.cause });
    }
  }
  const live = new Set();
  for (const p of state.programs) {
    live.add(p.program_id);
    const r = row(p.program_id);
    r.last = Math.max(r.last, now - WINDOW_S);
    if (r.phase === null && r.ended === null && r.spans.length === 0) {
      r.phase = p.phase === "reasoning" ? "reasoning" : "acting"; r.since = now - WINDOW_S; r.tool = p.tool;
      if (p.status === "paused" && r.paused === null) r.paused = now - WINDOW_S;
    }
  }
  for (const r of rows.values()) {
    if (r.phase) r.spans.push({ kind: r.phase, from: r.since, to: now, tool: r.tool });
    if (r.paused !== null) r.spans.push({ kind: "paused", from: r.paused, to: now });
    if (r.held !== null) r.spans.push({ kind: "held", from: r.held, to: now });
  }
  // live programs first, then those that ended most recently (at most MAX_ENDED of them)
  const shown = [...rows.values()].filter((r) => r.last >= now - WINDOW_S);
  const liveRows = shown.filter((r) => live.has(r.pid)).sort((a, b) => (a.pid < b.pid ? -1 : 1));
  const ended = shown.filter((r) => !live.has(r.pid)).sort((a, b) => b.last - a.last);
  return liveRows.concat(ended.slice(0, MAX_ENDED));
}

function renderTimeline() {
  const now = Date.now() / 1000;
  const rows = timelines(now);
  const [ctx, width] = canvas("timeline", Math.max(40, rows.length * ROW_PX + 18));
  const label = 170;
  const x = (t) => label + Math.max(0, (t - (now - WINDOW_S)) / WINDOW_S) * (width - label);
  const fills = { reasoning: css("--reason"), acting: css("--act"), paused: css("--pause"),
    held: css("--held") };
  rows.forEach((r, i) => {
    const y = i * ROW_PX;
    ctx.fillStyle = css("--text");
    ctx.fillText(r.pid.length > 28 ? r.pid.slice(0, 27) + "\u2026" : r.pid, 0, y + 10);
    for (const s of r.spans) {
      if (s.to < now - WINDOW_S) continue;
      const from = x(s.from);
      const to = x(s.to);
      ctx.fillStyle = fills[s.kind];
      if (s.kind === "paused" || s.kind === "held") ctx.fillRect(from, y + 9, Math.max(1, to - from), 4);
      else ctx.fillRect(from, y + 2, Math.max(1, to - from), 7);
      if (s.tool && to - from > 40) { ctx.fillStyle = css("--bg"); ctx.fillText(s.tool, from + 2, y + 9); }
    }
    for (const m of r.marks) {
      if (m.t < now - WINDOW_S) continue;
      ctx.fillStyle = css("--dim");
      ctx.fillRect(x(m.t) - 1, y + 1, 3, ROW_PX - 2);
    }
  });
  ctx.fillStyle = css("--dim");
  ctx.fillText("-" + (WINDOW_S / 60) + " min", label, rows.length * ROW_PX + 14);
  ctx.fillText("now", width - 22, rows.length * ROW_PX + 14);
}

const COLUMNS = ["program_id", "status", "phase", "tool", "steps", "context_tokens", "resident_tokens",
  "host_tokens", "prefill_tokens_cached", "prefill_tokens_computed", "missed_evicted_tokens",
  "missed_changed_tokens", "kv_decision", "tool_kv", "environments", "commands"];
const TEXT_COLUMNS = new Set(["program_id", "tool"]);

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

// the sidecar's report (null without a sidecar): "2 (1 running) 14.2 MB", and the commands
// running now, as text only
function environmentsText(envs) {
  if (!envs) return "";
  const running = envs.filter((e) => e.state === "running").length;
  const disk = envs.reduce((sum, e) => sum + (e.disk_bytes || 0), 0);
  return envs.length + (running ? " (" + running + " running)" : "") + (envs.length ? " " + bytes(disk) : "");
}

function commandsText(envs) {
  if (!envs) return "";
  const now = Date.now() / 1000;
  return envs.flatMap((e) => e.commands.map((c) =>
    (c.tool ? c.tool + ": " : "") + c.cmd + " (" + Math.max(0, now - c.started_at).toFixed(0) + " s)"))
    .join("; ");
}

function cellText(p, column) {
  if (TEXT_COLUMNS.has(column)) return p[column] ?? "";
  if (column === "environments") return environmentsText(p.environments);
  if (column === "commands") return commandsText(p.environments);
  return fmt(p[column]);
}
const STATUS_ORDER = { waiting: 0, paused: 1, active: 2, terminated: 3 };

function renderTable() {
  const rows = [...state.programs].sort((a, b) =>
    (STATUS_ORDER[a.status] ?? 9) - (STATUS_ORDER[b.status] ?? 9)
    || (b.context_tokens || 0) - (a.context_tokens || 0));
  const fragment = document.createDocumentFragment();
  for (const p of rows) {
    const tr = document.createElement("tr");
    tr.className = p.status || "";
    tr.dataset.program = p.program_id;
    for (const column of COLUMNS) {
      const td = document.createElement("td");
      td.textContent = cellText(p, column);
      if (column === "program_id" || column === "commands") td.title = td.textContent;
      tr.append(td);
    }
    fragment.append(tr);
  }
  document.getElementById("rows").replaceChildren(fragment);
}

function describe(e) {
  const time = new Date(e.t * 1000).toLocaleTimeString();
  const extra = Object.entries(e).filter(([k]) => !["seq", "t", "kind", "program_id"].includes(k))
    .map(([k, v]) => k + "=" + v).join(" ");
  return time + "  " + e.kind.padEnd(7) + " " + e.program_id + (extra ? "  " + extra : "");
}

function renderLog() {
  const log = document.getElementById("log");
  const lines = state.events.slice(-200).reverse().map((e) => {
    const div = document.createElement("div");
    div.textContent = describe(e);
    return div;
  });
  log.replaceChildren(...lines);
}

document.getElementById("keyform").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("key");
  if (input.value) sessionStorage.setItem(KEY_NAME, input.value);
  input.value = "";
  document.getElementById("keyform").className = "";
  loop();
});

loop();
