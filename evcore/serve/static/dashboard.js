// The evcore serve dashboard: plain DOM, no framework. Everything that comes from events is
// written with textContent (never innerHTML), so a task name or argument is only ever text.
"use strict";

const PAGE_SIZE = 50;
const view = { page: 0, openTask: null };
const timers = {};
let source = null;

function $(id) { return document.getElementById(id); }

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "" : String(text);
  td.title = td.textContent;
  if (className) td.className = className;
  return td;
}

function time(seconds) {
  if (typeof seconds !== "number") return "";
  return new Date(seconds * 1000).toLocaleTimeString();
}

function ago(seconds) {
  if (typeof seconds !== "number") return "never";
  return seconds < 1 ? "now" : `${seconds.toFixed(0)} s ago`;
}

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

function later(name, fn, delay) {
  if (timers[name]) return;
  timers[name] = setTimeout(() => { timers[name] = null; fn(); }, delay);
}

function fillSelect(select, values) {
  const chosen = select.value;
  const known = new Set(Array.from(select.options, (option) => option.value));
  for (const value of values) {
    if (known.has(value)) continue;
    const option = document.createElement("option");
    option.value = value;
    option.textContent = value;
    select.append(option);
  }
  select.value = chosen;
}

async function loadWorkers() {
  const workers = await getJSON("api/workers");
  const body = $("workers").tBodies[0];
  body.replaceChildren();
  for (const [name, worker] of Object.entries(workers)) {
    const row = body.insertRow();
    const pick = document.createElement("button");
    pick.type = "button";
    pick.className = "link mono";
    pick.textContent = name;
    pick.title = "Show this worker's tasks";
    pick.addEventListener("click", () => {
      fillSelect($("workername"), [name]);
      $("workername").value = name;
      view.page = 0;
      loadTasks();
    });
    row.insertCell().append(pick);
    cell(row, worker.status, `status-${worker.status}`);
    cell(row, ago(worker.last_seen_ago));
    cell(row, worker.active);
    cell(row, worker.processed);
    cell(row, Array.isArray(worker.loadavg) ? worker.loadavg.join(" ") : "");
    cell(row, [worker.sw_ident, worker.sw_ver].filter(Boolean).join(" "));
  }
  fillSelect($("workername"), Object.keys(workers));
}

function taskQuery() {
  const query = new URLSearchParams({ limit: PAGE_SIZE, offset: view.page * PAGE_SIZE });
  for (const [param, id] of [["state", "state"], ["taskname", "taskname"],
                             ["workername", "workername"], ["sort_by", "sort"],
                             ["search", "search"]]) {
    const value = $(id).value.trim();
    if (value) query.set(param, value);
  }
  // Flower's format: "YYYY-MM-DD HH:MM", local time.
  for (const [param, id] of [["received_start", "received-start"],
                             ["received_end", "received-end"]]) {
    const value = $(id).value;
    if (value) query.set(param, value.slice(0, 16).replace("T", " "));
  }
  return query;
}

async function loadTasks() {
  const tasks = await getJSON(`api/tasks?${taskQuery()}`);
  const body = $("tasks").tBodies[0];
  body.replaceChildren();
  for (const [uuid, task] of Object.entries(tasks)) {
    const row = body.insertRow();
    const open = document.createElement("button");
    open.type = "button";
    open.className = "link mono";
    open.textContent = uuid;
    open.addEventListener("click", () => showTask(uuid));
    row.insertCell().append(open);
    cell(row, task.name);
    cell(row, task.possibly_lost ? `${task.state} (possibly lost)` : task.state,
         `state-${task.state}`);
    cell(row, task.worker, "mono");
    cell(row, time(task.received));
    cell(row, typeof task.runtime === "number" ? `${task.runtime.toFixed(3)} s` : "");
    cell(row, task.args, "mono");
  }
  $("page").textContent = String(view.page + 1);
  $("newer").disabled = view.page === 0;
  $("older").disabled = Object.keys(tasks).length < PAGE_SIZE;
}

async function loadTypes() {
  const types = await getJSON("api/task/types");
  fillSelect($("taskname"), types["task-types"] || []);
}

async function loadHealth() {
  const status = await getJSON("api/evcore");
  const problems = [];
  if (!status.connected) problems.push("The receiver is disconnected from the broker.");
  const lost = Object.entries(status.lost_events || {});
  const total = lost.reduce((sum, [, count]) => sum + count, 0);
  if (total) {
    problems.push(`${total} events were lost in transit (${lost.map(([who, n]) => `${who}: ${n}`).join(", ")}).`);
  }
  if (status.possibly_lost) problems.push(`${status.possibly_lost} tasks are possibly lost.`);
  if (source === null && !document.hidden) problems.push("Live updates are paused.");
  const banner = $("banner");
  banner.textContent = problems.join(" ");
  banner.hidden = problems.length === 0;
  $("summary").textContent =
    `${status.events} events · ${status.tasks} tasks · ${status.workers} workers`;
}

const FIELDS = ["uuid", "name", "state", "possibly_lost", "worker", "args", "kwargs",
                "result", "exception", "retries", "sent", "received", "started",
                "succeeded", "failed", "runtime", "parent_id", "root_id", "children"];

async function showTask(uuid) {
  const task = await getJSON(`api/task/info/${encodeURIComponent(uuid)}`);
  view.openTask = uuid;
  const list = $("detail-fields");
  list.replaceChildren();
  const add = (label, value) => {
    const term = document.createElement("dt");
    term.textContent = label;
    const detail = document.createElement("dd");
    if (value instanceof Node) detail.append(value); else detail.textContent = value;
    list.append(term, detail);
  };
  for (const field of FIELDS) {
    const value = task[field];
    if (value === null || value === undefined || (Array.isArray(value) && !value.length)) continue;
    if (["sent", "received", "started", "succeeded", "failed"].includes(field)) {
      add(field, time(value));
    } else if (field === "parent_id" || field === "root_id" || field === "children") {
      const links = document.createElement("span");
      for (const id of Array.isArray(value) ? value : [value]) {
        const link = document.createElement("button");
        link.type = "button";
        link.className = "link mono";
        link.textContent = id;
        link.addEventListener("click", () => showTask(id));
        links.append(link, " ");
      }
      add(field, links);
    } else {
      add(field, typeof value === "object" ? JSON.stringify(value) : String(value));
    }
  }
  if (typeof task.started === "number" && typeof task.received === "number") {
    add("waited", `${(task.started - task.received).toFixed(3)} s`);
  }
  $("detail-traceback").textContent = task.traceback || "";
  $("traceback-block").hidden = !task.traceback;
  $("detail").hidden = false;
  $("close-detail").focus();
}

const COLORS = ["#0b57d0", "#1b7f3b", "#b3261e", "#a86400", "#6b3fa0"];
const RATE_TYPES = ["task-received", "task-started", "task-succeeded", "task-failed",
                    "task-retried"];

function legend(id, names, colors) {
  const holder = $(id);
  holder.replaceChildren();
  names.forEach((name, index) => {
    const swatch = document.createElement("span");
    swatch.className = `swatch s${colors[index]}`;
    holder.append(swatch, name);
  });
}

// Lines (or bars) of several series on a canvas, scaled to the largest value; colors[i]
// indexes COLORS for series i.
function draw(canvas, series, bars, colors) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  const length = Math.max(1, ...series.map((values) => values.length));
  const top = Math.max(1, ...series.flat());
  context.fillStyle = "#4a5360";
  context.font = "11px system-ui, sans-serif";
  context.fillText(String(top), 2, 11);
  context.strokeStyle = "#e3e6ea";
  context.beginPath();
  context.moveTo(0, height - 0.5);
  context.lineTo(width, height - 0.5);
  context.stroke();
  const step = width / length;
  series.forEach((values, index) => {
    context.strokeStyle = context.fillStyle = COLORS[colors[index]];
    if (bars) {
      const barWidth = step / (series.length + 1);
      values.forEach((value, at) => {
        const barHeight = (value / top) * (height - 14);
        context.fillRect(at * step + index * barWidth, height - barHeight, barWidth, barHeight);
      });
      return;
    }
    context.beginPath();
    values.forEach((value, at) => {
      const x = at * step + step / 2;
      const y = height - 1 - (value / top) * (height - 14);
      if (at === 0) context.moveTo(x, y); else context.lineTo(x, y);
    });
    context.stroke();
  });
}

function seconds(value) {
  return typeof value === "number" ? `${value.toFixed(3)} s` : "";
}

async function loadCharts() {
  const rates = await getJSON("api/stats/rates?seconds=600");
  const types = rates.types || {};
  const length = Object.values(types).reduce((most, values) => Math.max(most, values.length), 0);
  const lastTwoMinutes = RATE_TYPES.map((type) => (types[type] || []).slice(-120));
  draw($("rate-chart"), lastTwoMinutes, false, [0, 3, 1, 2, 4]);
  legend("rate-legend", RATE_TYPES, [0, 3, 1, 2, 4]);
  const perMinute = (type) => {
    const values = types[type] || new Array(length).fill(0);
    const minutes = [];
    for (let start = 0; start < values.length; start += 60) {
      minutes.push(values.slice(start, start + 60).reduce((sum, value) => sum + value, 0));
    }
    return minutes;
  };
  draw($("outcome-chart"), [perMinute("task-succeeded"), perMinute("task-failed")], true,
       [1, 2]);
  legend("outcome-legend", ["succeeded", "failed"], [1, 2]);
  const stats = await getJSON("api/stats/tasks");
  const body = $("task-stats").tBodies[0];
  body.replaceChildren();
  for (const [name, entry] of Object.entries(stats)) {
    const runtime = entry.runtime || {};
    const wait = entry.queue_wait || {};
    const row = body.insertRow();
    cell(row, name);
    cell(row, runtime.count ?? "");
    for (const value of [runtime.p50, runtime.p90, runtime.p99, wait.p50, wait.p90, wait.p99]) {
      cell(row, seconds(value));
    }
  }
}

function refreshAll() {
  return Promise.allSettled([loadWorkers(), loadTasks(), loadTypes(), loadHealth(),
                             loadCharts()]);
}

function connect() {
  if (source !== null || document.hidden) return;
  source = new EventSource("api/events/stream?groups=task,worker");
  source.addEventListener("task", () => later("tasks", loadTasks, 300));
  source.addEventListener("worker", () => later("workers", loadWorkers, 500));
  source.addEventListener("dropped", () => later("all", refreshAll, 300));
  source.onerror = () => later("health", loadHealth, 1000);
}

function disconnect() {
  if (source !== null) source.close();
  source = null;
}

function init() {
  for (const id of ["state", "taskname", "workername", "sort", "received-start",
                    "received-end"]) {
    $(id).addEventListener("change", () => { view.page = 0; loadTasks(); });
  }
  $("search").addEventListener("input", () => { view.page = 0; later("tasks", loadTasks, 250); });
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("newer").addEventListener("click", () => { view.page = Math.max(0, view.page - 1); loadTasks(); });
  $("older").addEventListener("click", () => { view.page += 1; loadTasks(); });
  $("close-detail").addEventListener("click", () => { $("detail").hidden = true; });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") $("detail").hidden = true;
  });
  // A hidden tab streams nothing: the server keeps no buffer for it.
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) { disconnect(); } else { connect(); refreshAll(); }
  });
  refreshAll();
  connect();
  setInterval(() => { if (!document.hidden) { loadWorkers(); loadHealth(); } }, 5000);
  setInterval(() => { if (!document.hidden) loadCharts(); }, 2000);
}

document.addEventListener("DOMContentLoaded", init);
