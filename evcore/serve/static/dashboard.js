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
    cell(row, name, "mono");
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

function refreshAll() {
  return Promise.allSettled([loadWorkers(), loadTasks(), loadTypes(), loadHealth()]);
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
  for (const id of ["state", "taskname", "workername", "sort"]) {
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
}

document.addEventListener("DOMContentLoaded", init);
