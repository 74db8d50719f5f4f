// The evcore dashboard. Everything it shows comes from events, which anyone who can publish
// on the broker controls: it is only ever inserted as text (textContent, never as markup).
"use strict";

const view = document.getElementById("view");
const banner = document.getElementById("banner");
const liveLabel = document.getElementById("live");

const PALETTE = ["#1a5fb4", "#26a269", "#c01c28", "#c28a00", "#613583", "#1c71d8",
                 "#865e3c", "#e66100", "#2ec27e", "#9141ac", "#63452c", "#77767b"];
const STATES = ["PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE", "RETRY",
                "REVOKED", "REJECTED"];
const PAGE_SIZE = 50;

let latest = null;          // the last tick's overview
let shownVersion = -1;      // the State version the current view was drawn from
let refreshing = false;
let stream = null;

// -- building the page: elements with text, never markup -----------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmtTime(epoch) {
  if (epoch === null || epoch === undefined) return "";
  return new Date(epoch * 1000).toLocaleString();
}

function fmtSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 1) return (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 0) + " ms";
  if (seconds < 120) return seconds.toFixed(2) + " s";
  return (seconds / 60).toFixed(1) + " min";
}

function taskLink(uuid, label) {
  return el("a", { href: "#/task/" + encodeURIComponent(uuid), class: "mono",
                   text: label || uuid });
}

function workerLink(hostname) {
  if (!hostname) return el("span", { class: "muted", text: "—" });
  return el("a", { href: "#/worker/" + encodeURIComponent(hostname), text: hostname });
}

function stateCell(state) {
  return el("td", { class: "state state-" + String(state || "").replace(/[^A-Z]/g, ""),
                    text: state || "" });
}

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) {
    let reason = response.statusText;
    try { reason = (await response.json()).error || reason; } catch (_) { /* not JSON */ }
    throw new Error(response.status + " " + reason);
  }
  return response.json();
}

// -- routing ----------------------------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const parts = path.split("/").filter(Boolean);
  return { parts, params: new URLSearchParams(query || "") };
}

async function render() {
  const { parts, params } = route();
  for (const link of document.querySelectorAll("nav a")) {
    const current = (parts[0] || "overview") === link.dataset.nav ||
                    (parts[0] === "task" && link.dataset.nav === "tasks");
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  refreshing = true;
  try {
    let content;
    if (parts[0] === "tasks") content = await tasksPage(params);
    else if (parts[0] === "task") content = await taskPage(decodeURIComponent(parts[1] || ""));
    else if (parts[0] === "worker") {
      content = await workerPage(decodeURIComponent(parts.slice(1).join("/")));
    } else content = await overviewPage();
    const focused = document.activeElement && document.activeElement.id;
    view.replaceChildren(content);
    if (focused) {
      const again = document.getElementById(focused);
      if (again) again.focus();
    }
    shownVersion = latest ? latest.version : shownVersion;
  } catch (error) {
    view.replaceChildren(el("p", { class: "banner", text: "Could not load: " + error.message }));
  } finally {
    refreshing = false;
  }
}

// -- overview ---------------------------------------------------------------------------------

async function overviewPage() {
  const [summary, workers] = await Promise.all([
    getJSON("/api/dashboard/overview"), getJSON("/api/dashboard/workers")]);
  latest = summary;
  const byState = summary.tasks.by_state;
  const online = workers.workers.filter((w) => w.status === "online").length;
  const cards = el("div", { class: "cards" },
    card("Workers online", online + " / " + workers.workers.length),
    card("Tasks held", summary.tasks.total),
    card("Succeeded", byState.SUCCESS || 0),
    card("Failed", byState.FAILURE || 0),
    card("Events lost", summary.health.lost),
    card("Events rejected", summary.health.rejected));
  const rateCanvas = el("canvas", { id: "chart-rates", width: 640, height: 200,
                                    role: "img", "aria-label": "Events per second by type" });
  const outcomeCanvas = el("canvas", { id: "chart-outcomes", width: 640, height: 200,
                                       role: "img",
                                       "aria-label": "Succeeded and failed tasks per minute" });
  const page = el("section", {},
    el("h1", { text: "Cluster" }), cards,
    el("div", { class: "charts" },
      el("div", {}, el("h2", { text: "Events per second" }), rateCanvas,
         el("div", { class: "legend", id: "legend-rates" })),
      el("div", {}, el("h2", { text: "Succeeded and failed per minute" }), outcomeCanvas,
         el("div", { class: "legend", id: "legend-outcomes" }))),
    el("h2", { text: "Workers" }), workersTable(workers.workers),
    el("h2", { text: "Runtime and queue wait by task (p50 / p90 / p99)" }),
    percentileTable(summary.percentiles));
  requestAnimationFrame(() => drawCharts(summary));
  return page;
}

function card(label, value) {
  return el("div", { class: "card" }, el("div", { class: "value", text: value }),
            el("div", { class: "label", text: label }));
}

function workersTable(workers) {
  const head = el("tr", {}, ["Worker", "Status", "Last heartbeat", "Active", "Processed",
                             "Load", "Software"].map((name) => el("th", { scope: "col",
                                                                        text: name })));
  const rows = workers.map((w) => el("tr", {},
    el("td", {}, workerLink(w.hostname)),
    el("td", { class: "status-" + w.status, text: w.status }),
    el("td", { text: w.seen_ago === null ? "never" : fmtSeconds(w.seen_ago) + " ago" }),
    el("td", { class: "num", text: w.active ?? "" }),
    el("td", { class: "num", text: w.processed ?? "" }),
    el("td", { class: "num", text: (w.loadavg || []).map((v) => v ?? "?").join(" ") }),
    el("td", { text: w.software || "" })));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 7, class: "muted",
                                                     text: "No worker seen yet." })));
  return el("table", { id: "workers" }, el("thead", {}, head), el("tbody", {}, rows));
}

function percentileTable(rows) {
  const head = el("tr", {}, ["Task", "Runs", "Runtime", "Queue wait"].map(
    (name) => el("th", { scope: "col", text: name })));
  const three = (values) => values.map((v) => (v === null ? "–" : fmtSeconds(v))).join(" / ");
  const body = rows.map((row) => el("tr", {},
    el("td", {}, el("a", { href: "#/tasks?name=" + encodeURIComponent(row.name),
                           text: row.name })),
    el("td", { class: "num", text: row.count }),
    el("td", { class: "num", text: three(row.runtime) }),
    el("td", { class: "num", text: three(row.wait) })));
  return el("table", { id: "percentiles" }, el("thead", {}, head), el("tbody", {}, body));
}

function drawCharts(summary) {
  const rates = document.getElementById("chart-rates");
  if (rates) {
    const names = Object.keys(summary.rates).sort();
    drawLines(rates, names.map((name) => summary.rates[name]));
    legend("legend-rates", names);
  }
  const outcomes = document.getElementById("chart-outcomes");
  if (outcomes) {
    drawBars(outcomes, summary.outcomes.map((row) => [row[1], row[2]]));
    legend("legend-outcomes", ["succeeded", "failed"], [PALETTE[1], PALETTE[2]]);
  }
}

function legend(id, names, colours) {
  const box = document.getElementById(id);
  if (!box) return;
  box.replaceChildren(...names.map((name, i) => el("span", {},
    swatch(colours ? colours[i] : PALETTE[i % PALETTE.length]), name)));
}

function swatch(colour) {
  const mark = el("span", { class: "swatch" });
  mark.style.background = colour;   // CSSOM, allowed by the page's style-src policy
  return mark;
}

function prepare(canvas, maximum) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  ctx.fillStyle = getComputedStyle(document.body).color;
  ctx.font = "11px sans-serif";
  ctx.fillText(String(maximum), 4, 12);
  ctx.strokeStyle = "rgba(127,127,127,0.35)";
  ctx.beginPath(); ctx.moveTo(0, height - 1); ctx.lineTo(width, height - 1); ctx.stroke();
  return ctx;
}

function drawLines(canvas, series) {
  const maximum = Math.max(1, ...series.flat());
  const ctx = prepare(canvas, maximum);
  const { width, height } = canvas;
  series.forEach((values, i) => {
    ctx.strokeStyle = PALETTE[i % PALETTE.length];
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    values.forEach((value, x) => {
      const px = (x / Math.max(1, values.length - 1)) * width;
      const py = height - 2 - (value / maximum) * (height - 18);
      if (x === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
    });
    ctx.stroke();
  });
}

function drawBars(canvas, pairs) {
  const maximum = Math.max(1, ...pairs.map(([ok, bad]) => ok + bad));
  const ctx = prepare(canvas, maximum);
  const { width, height } = canvas;
  const step = width / Math.max(1, pairs.length);
  pairs.forEach(([ok, bad], i) => {
    const scale = (height - 18) / maximum;
    ctx.fillStyle = PALETTE[1];
    ctx.fillRect(i * step + 1, height - 1 - ok * scale, step - 2, ok * scale);
    ctx.fillStyle = PALETTE[2];
    ctx.fillRect(i * step + 1, height - 1 - (ok + bad) * scale, step - 2, bad * scale);
  });
}

// -- tasks ------------------------------------------------------------------------------------

const COLUMNS = [
  ["uuid", "Task id", null], ["name", "Name", "name"], ["state", "State", "state"],
  ["worker", "Worker", "worker"], ["received", "Received", "received"],
  ["runtime", "Runtime", "runtime"], ["args", "Args", null], ["exception", "Exception", null],
];

function tasksHash(params) {
  for (const [key, value] of [...params.entries()]) if (!value) params.delete(key);
  return "#/tasks?" + params.toString();
}

async function tasksPage(params) {
  const query = new URLSearchParams(params);
  if (!query.has("limit")) query.set("limit", PAGE_SIZE);
  const data = await getJSON("/api/dashboard/tasks?" + query.toString());
  const offset = Number(params.get("offset") || 0);
  const sort = params.get("sort") || "received";
  const order = params.get("order") || "desc";

  const form = el("form", { class: "filters", id: "task-filters", onsubmit: (event) => {
    event.preventDefault();
    const next = new URLSearchParams(new FormData(event.target));
    next.set("sort", sort); next.set("order", order);
    for (const key of ["since", "until"]) {
      const value = next.get(key);
      if (value) next.set(key, String(new Date(value).getTime() / 1000));
    }
    location.hash = tasksHash(next);
  } },
    el("label", {}, "Search (name, id, args)",
       el("input", { id: "search", name: "q", type: "search", value: params.get("q") || "",
                     maxlength: 200 })),
    el("label", {}, "State", el("select", { id: "filter-state", name: "state" },
       el("option", { value: "", text: "any" }),
       STATES.map((s) => el("option", { value: s, text: s,
                                         selected: params.get("state") === s })))),
    el("label", {}, "Task name", el("input", { id: "filter-name", name: "name",
                                               value: params.get("name") || "",
                                               maxlength: 200 })),
    el("label", {}, "Worker", el("input", { id: "filter-worker", name: "worker",
                                            value: params.get("worker") || "",
                                            maxlength: 200 })),
    el("label", {}, "Received after", el("input", { id: "filter-since", name: "since",
                                                   type: "datetime-local",
                                                   value: localInput(params.get("since")) })),
    el("label", {}, "Received before", el("input", { id: "filter-until", name: "until",
                                                    type: "datetime-local",
                                                    value: localInput(params.get("until")) })),
    el("button", { type: "submit", id: "apply-filters", text: "Apply" }));

  const head = el("tr", {}, COLUMNS.map(([key, label, sortKey]) => {
    if (!sortKey) return el("th", { scope: "col", text: label });
    const active = sort === sortKey;
    const next = new URLSearchParams(params);
    next.set("sort", sortKey);
    next.set("order", active && order === "desc" ? "asc" : "desc");
    next.delete("offset");
    return el("th", { scope: "col",
                      "aria-sort": active ? (order === "desc" ? "descending" : "ascending")
                                          : null },
      el("button", { type: "button", "data-sort": sortKey,
                     onclick: () => { location.hash = tasksHash(next); },
                     text: label + (active ? (order === "desc" ? " ▼" : " ▲") : "") }));
  }));
  const rows = data.tasks.map((t) => el("tr", { "data-uuid": t.uuid },
    el("td", { class: "nowrap" }, taskLink(t.uuid, t.uuid.slice(0, 8))),
    el("td", { text: t.name || "" }),
    stateCell(t.state),
    el("td", { class: "nowrap" }, workerLink(t.worker)),
    el("td", { class: "nowrap", text: fmtTime(t.received) }),
    el("td", { class: "num", text: fmtSeconds(t.runtime) }),
    el("td", { class: "mono", text: t.args || "" }),
    el("td", { class: "mono", text: t.exception || "" })));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: COLUMNS.length, class: "muted",
                                                     text: "No task matches." })));

  const pager = el("div", { class: "pager" },
    pageButton("Previous", offset > 0, params, Math.max(0, offset - PAGE_SIZE)),
    el("span", { id: "page-info", text: data.total
      ? `${offset + 1}–${offset + data.tasks.length} of ${data.total}` : "0 tasks" }),
    pageButton("Next", offset + PAGE_SIZE < data.total, params, offset + PAGE_SIZE));
  return el("section", {}, el("h1", { text: "Tasks" }), form,
            el("table", { id: "tasks" }, el("thead", {}, head), el("tbody", {}, rows)), pager);
}

function pageButton(label, enabled, params, offset) {
  const next = new URLSearchParams(params);
  next.set("offset", offset);
  return el("button", { type: "button", id: "page-" + label.toLowerCase(), disabled: !enabled,
                        onclick: () => { location.hash = tasksHash(next); }, text: label });
}

function localInput(epoch) {
  if (!epoch) return "";
  const date = new Date(Number(epoch) * 1000);
  const local = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 16);
}

// -- one task, one worker ---------------------------------------------------------------------

async function taskPage(uuid) {
  const t = await getJSON("/api/dashboard/tasks/" + encodeURIComponent(uuid));
  const fields = el("dl", { class: "fields" },
    field("State", el("span", { class: "state state-" + (t.state || "").replace(/[^A-Z]/g, ""),
                                text: t.state || "" })),
    field("Name", t.name), field("Worker", workerLink(t.worker)), field("Client", t.client),
    field("Retries", t.retries), field("ETA", t.eta), field("Expires", t.expires),
    field("Queue wait", fmtSeconds(t.wait)), field("Runtime", fmtSeconds(t.runtime)),
    field("Parent", t.parent ? taskLink(t.parent.uuid, label(t.parent)) : "—"),
    field("Root", t.root ? taskLink(t.root.uuid, label(t.root)) : "—"));
  const first = t.timeline.length ? t.timeline[0].at : 0;
  const timeline = el("ol", { id: "timeline" }, t.timeline.map((step, i) =>
    el("li", { text: `${step.stage}: ${fmtTime(step.at)}` +
                     (i ? ` (+${fmtSeconds(step.at - first)})` : "") })));
  const children = el("ul", { id: "children" }, t.children.map((child) =>
    el("li", {}, taskLink(child.uuid, label(child)), " ", child.state || "")));
  return el("section", {},
    el("h1", {}, "Task ", el("span", { class: "mono", text: t.uuid })),
    fields,
    el("h2", { text: "Timeline" }), timeline,
    block("Arguments", "task-args", t.args), block("Keyword arguments", "task-kwargs", t.kwargs),
    block("Result", "task-result", t.result), block("Exception", "task-exception", t.exception),
    block("Traceback", "task-traceback", t.traceback),
    el("h2", { text: `Children (${t.children_total})` }), children);
}

function label(link) {
  return (link.name ? link.name + " " : "") + link.uuid.slice(0, 8);
}

function field(name, value) {
  const dd = el("dd", {});
  if (value instanceof Node) dd.append(value);
  else dd.textContent = value === null || value === undefined || value === "" ? "—"
                                                                                : String(value);
  return [el("dt", { text: name }), dd];
}

function block(title, id, text) {
  if (text === null || text === undefined || text === "") return null;
  return [el("h2", { text: title }), el("pre", { id, text })];
}

async function workerPage(hostname) {
  const w = await getJSON("/api/dashboard/workers/" + encodeURIComponent(hostname));
  const rows = w.tasks.map((t) => el("tr", {},
    el("td", {}, taskLink(t.uuid, t.uuid.slice(0, 8))), el("td", { text: t.name || "" }),
    stateCell(t.state), el("td", { text: fmtTime(t.received) }),
    el("td", { class: "num", text: fmtSeconds(t.runtime) })));
  return el("section", {},
    el("h1", {}, "Worker ", el("span", { text: w.hostname })),
    el("dl", { class: "fields" },
      field("Status", el("span", { class: "status-" + w.status, text: w.status })),
      field("Last heartbeat", w.seen_ago === null ? "never" : fmtSeconds(w.seen_ago) + " ago"),
      field("Active", w.active), field("Processed", w.processed),
      field("Load", (w.loadavg || []).join(" ")), field("Software", w.software)),
    el("h2", { text: `Recent tasks (${w.tasks_total})` }),
    el("table", { id: "worker-tasks" },
       el("thead", {}, el("tr", {}, ["Task id", "Name", "State", "Received", "Runtime"].map(
         (name) => el("th", { scope: "col", text: name })))),
       el("tbody", {}, rows)),
    el("p", {}, el("a", { href: "#/tasks?worker=" + encodeURIComponent(w.hostname),
                          text: "All tasks of this worker" })));
}

// -- live updates -----------------------------------------------------------------------------

function showHealth(summary) {
  const health = summary.health;
  const problems = [];
  if (!health.connected) problems.push("The monitor is disconnected from the broker.");
  if (health.lost) problems.push(`${health.lost} events were lost in transit.`);
  if (health.possibly_lost) {
    problems.push(`${health.possibly_lost} unfinished tasks are possibly lost ` +
                  "(their worker went silent or its stream had a gap).");
  }
  banner.hidden = problems.length === 0;
  banner.className = health.connected ? "banner warn" : "banner";
  banner.textContent = problems.join(" ");
}

function onTick(message) {
  latest = JSON.parse(message.data);
  liveLabel.textContent = `live · ${latest.tasks.total} tasks · ${latest.workers} workers`;
  showHealth(latest);
  if (latest.version !== shownVersion && !refreshing) {
    const editing = document.activeElement && document.activeElement.closest &&
                    document.activeElement.closest("form");
    if (!editing) render();
  } else if (route().parts.length === 0) {
    drawCharts(latest);
  }
}

function connect() {
  if (stream) return;
  stream = new EventSource("/api/dashboard/live");
  stream.addEventListener("tick", onTick);
  stream.onerror = () => { liveLabel.textContent = "reconnecting…"; };
}

function disconnect() {
  if (stream) { stream.close(); stream = null; }
  liveLabel.textContent = "paused";
}

// A hidden tab holds no stream open; it catches up when shown again.
document.addEventListener("visibilitychange", () => {
  if (document.hidden) disconnect(); else { connect(); render(); }
});
document.addEventListener("keydown", (event) => {
  if (event.key === "/" && document.activeElement.tagName !== "INPUT") {
    const search = document.getElementById("search");
    if (search) { event.preventDefault(); search.focus(); }
    else location.hash = "#/tasks";
  }
});
window.addEventListener("hashchange", () => { render(); view.focus(); });
render();
connect();
