// The fleet page: polls /api/machines (and one machine's /api/.../history) and redraws; no libraries.
"use strict";

const FLEET_REFRESH_MS = 2000;
const MACHINE_REFRESH_MS = 5000;
const COLOURS = ["#0969da", "#bf3989", "#1a7f37", "#9a6700", "#8250df", "#cf222e", "#116329", "#953800"];

const state = { machines: [], now: 0, sortKey: "ip", sortDir: 1, timer: null, machine: null };

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  return node;
}

// "12s", "42m", "5h 3m", "3d 4h": the same words as `mdp status`.
function duration(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
  const m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
  if (d) return h ? `${d}d ${h}h` : `${d}d`;
  if (h) return m ? `${h}h ${m}m` : `${h}h`;
  if (m) return `${m}m`;
  return `${s}s`;
}

function ago(t, now) { return t == null ? "never" : `${duration(now - t)} ago`; }
function percent(ratio) { return ratio == null ? "" : `${(ratio * 100).toFixed(0)}%`; }
function machineState(m) { return m.last_seen == null ? "never" : (m.up ? "up" : "stale"); }

function bar(ratio) {
  const outer = el("span", { class: ratio != null && ratio >= 0.9 ? "bar high" : "bar" });
  const inner = el("span");
  inner.style.width = `${Math.min(100, Math.max(0, (ratio || 0) * 100))}%`;
  outer.append(inner);
  return outer;
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

// --- the fleet table ---------------------------------------------------------------------------

function sortValue(m, key) {
  if (key === "state") return { up: 0, stale: 1, never: 2 }[machineState(m)];
  if (key === "ip") return m.ip.split(/[.:]/).map(p => p.padStart(5, "0")).join(".");
  const value = m[key];
  return value == null ? -Infinity : value;
}

function matches(m, text) {
  if (!text) return true;
  const hay = [m.ip, m.hostname, m.agent_version, machineState(m), ...(m.errors || [])].join(" ").toLowerCase();
  return text.toLowerCase().split(/\s+/).every(word => hay.includes(word));
}

function renderFleet() {
  const now = state.now;
  const body = $("fleet").tBodies[0];
  const filter = $("filter").value.trim();
  const rows = state.machines.filter(m => matches(m, filter)).sort((a, b) => {
    const x = sortValue(a, state.sortKey), y = sortValue(b, state.sortKey);
    return (x < y ? -1 : x > y ? 1 : 0) * state.sortDir || (a.ip < b.ip ? -1 : 1);
  });
  body.replaceChildren(...rows.map(m => {
    const tr = el("tr", { "data-ip": m.ip, "data-state": machineState(m), title: `open ${m.ip}` },
      el("td", {}, el("span", { class: "state" }, machineState(m))),
      el("td", {}, m.ip),
      el("td", {}, m.hostname || ""),
      el("td", { class: "last-seen" }, ago(m.last_seen, now)),
      el("td", { class: "num" }, m.load1 == null ? "" : m.load1.toFixed(2)),
      el("td", { class: "num" }, bar(m.memory_used_ratio), percent(m.memory_used_ratio)),
      el("td", { class: "num", title: m.disk_mountpoint || "" }, bar(m.disk_used_ratio), percent(m.disk_used_ratio)),
      el("td", {}, m.agent_version || ""),
      el("td", { class: "num" }, String(m.reports)));
    if (m.errors && m.errors.length) tr.cells[1].append(el("div", { class: "error" }, `errors: ${m.errors.join(", ")}`));
    tr.addEventListener("click", () => { location.hash = `#/machine/${encodeURIComponent(m.ip)}`; });
    return tr;
  }));
  $("empty").hidden = state.machines.length > 0;
  for (const th of $("fleet").tHead.rows[0].cells) {
    th.classList.toggle("sorted-asc", th.dataset.key === state.sortKey && state.sortDir > 0);
    th.classList.toggle("sorted-desc", th.dataset.key === state.sortKey && state.sortDir < 0);
  }
  const up = state.machines.filter(m => m.up).length;
  const stale = state.machines.filter(m => machineState(m) === "stale").length;
  $("summary").textContent = `${state.machines.length} machines: ${up} up, ${stale} stale`;
}

async function refreshFleet() {
  try {
    const data = await getJSON("/api/machines");
    state.machines = data.machines;
    state.now = data.now;
    renderFleet();
    $("updated").textContent = `updated ${new Date(data.now * 1000).toLocaleTimeString()}`;
  } catch (err) {
    $("updated").textContent = `cannot reach the monitor (${err.message}); retrying`;
  }
}

// --- one machine: charts of its history, its latest results, its events ---------------------------

function chart(svg, series, opts) {
  const width = svg.clientWidth || 400, height = svg.clientHeight || 180;
  const pad = { left: 42, right: 8, top: 8, bottom: 20 };
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const ns = "http://www.w3.org/2000/svg";
  const make = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const points = series.flatMap(s => s.points);
  svg.replaceChildren();
  if (!points.length) {
    svg.append(make("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no data in this range"));
    return;
  }
  const t0 = Math.min(...points.map(p => p[0])), t1 = Math.max(...points.map(p => p[0]), t0 + 1);
  const yMax = opts.max ?? Math.max(...points.map(p => p[1]), 1e-9) * 1.1;
  const x = t => pad.left + (t - t0) / (t1 - t0) * (width - pad.left - pad.right);
  const y = v => height - pad.bottom - v / yMax * (height - pad.top - pad.bottom);
  svg.append(make("line", { class: "axis", x1: pad.left, x2: width - pad.right, y1: y(0), y2: y(0) }));
  for (const frac of [0.5, 1]) {
    svg.append(make("line", { class: "axis", x1: pad.left, x2: width - pad.right, y1: y(yMax * frac), y2: y(yMax * frac) }));
    svg.append(make("text", { x: pad.left - 4, y: y(yMax * frac) + 3, "text-anchor": "end" }, opts.format(yMax * frac)));
  }
  svg.append(make("text", { x: pad.left, y: height - 4 }, new Date(t0 * 1000).toLocaleTimeString()));
  svg.append(make("text", { x: width - pad.right, y: height - 4, "text-anchor": "end" }, new Date(t1 * 1000).toLocaleTimeString()));
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const line = make("polyline", { stroke: COLOURS[i % COLOURS.length],
      points: s.points.map(p => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ") });
    line.append(make("title", {}, s.name));
    svg.append(line);
    svg.append(make("text", { x: pad.left + 6 + i * 90, y: pad.top + 10, fill: COLOURS[i % COLOURS.length] }, s.name));
  });
}

function renderHistory(points) {
  const pick = key => points.filter(p => p[key] != null).map(p => [p.t, p[key]]);
  chart($("chart-load"), [{ name: "load1", points: pick("load1") }, { name: "load5", points: pick("load5") },
    { name: "load15", points: pick("load15") }], { format: v => v.toFixed(2) });
  const memory = points.filter(p => p.memory_total > 0 && p.memory_available != null)
    .map(p => [p.t, 100 * (1 - p.memory_available / p.memory_total)]);
  chart($("chart-memory"), [{ name: "used", points: memory }], { max: 100, format: v => `${v.toFixed(0)}%` });
  const mounts = [...new Set(points.flatMap(p => Object.keys(p.disk_used_ratio || {})))].sort();
  chart($("chart-disk"), mounts.map(mount => ({ name: mount,
    points: points.filter(p => p.disk_used_ratio && mount in p.disk_used_ratio).map(p => [p.t, 100 * p.disk_used_ratio[mount]]) })),
  { max: 100, format: v => `${v.toFixed(0)}%` });
}

async function refreshMachine() {
  const ip = state.machine;
  try {
    const [detail, history] = await Promise.all([
      getJSON(`/api/machines/${encodeURIComponent(ip)}`),
      getJSON(`/api/machines/${encodeURIComponent(ip)}/history?seconds=${$("range").value}`)]);
    if (ip !== state.machine) return;
    const m = detail.machine;
    $("machine-title").textContent = m.hostname ? `${m.ip} (${m.hostname})` : m.ip;
    $("machine-title").dataset.state = machineState(m);
    $("machine-facts").textContent = `${machineState(m)}, last report ${ago(m.last_seen, detail.now)}, every ` +
      `${m.interval == null ? "?" : duration(m.interval)}, ${m.reports} reports` +
      (m.agent_version ? `, agent ${m.agent_version}` : "");
    renderHistory(history.points);
    const ops = Object.entries(m.latest).sort(([a], [b]) => (a < b ? -1 : 1));
    $("operations").tBodies[0].replaceChildren(...ops.map(([name, value]) => el("tr", { "data-operation": name },
      el("td", {}, name), el("td", {}, ago(value.received_at, detail.now)),
      el("td", {}, "error" in value
        ? el("span", { class: "error" }, `${value.error.code}: ${value.error.message}`)
        : el("pre", {}, JSON.stringify(value.result, null, 1))))));
    $("events").replaceChildren(...(detail.events.length ? detail.events.map(e =>
      el("li", {}, `${new Date(e.at * 1000).toLocaleString()} ${e.kind}: ${e.message}`)) : [el("li", { class: "muted" }, "none")]));
    $("updated").textContent = `updated ${new Date(detail.now * 1000).toLocaleTimeString()}`;
  } catch (err) {
    $("updated").textContent = `cannot load ${ip} (${err.message}); retrying`;
  }
}

// --- routing: #/ is the fleet, #/machine/IP one machine ---------------------------------------------

function route() {
  clearInterval(state.timer);
  const match = location.hash.match(/^#\/machine\/(.+)$/);
  state.machine = match ? decodeURIComponent(match[1]) : null;
  $("fleet-view").hidden = !!state.machine;
  $("machine-view").hidden = !state.machine;
  const refresh = state.machine ? refreshMachine : refreshFleet;
  refresh();
  state.timer = setInterval(refresh, state.machine ? MACHINE_REFRESH_MS : FLEET_REFRESH_MS);
}

for (const th of document.querySelectorAll("#fleet th")) {
  th.addEventListener("click", () => {
    state.sortDir = state.sortKey === th.dataset.key ? -state.sortDir : 1;
    state.sortKey = th.dataset.key;
    renderFleet();
  });
}
$("filter").addEventListener("input", renderFleet);
$("range").addEventListener("change", refreshMachine);
window.addEventListener("hashchange", route);
route();
