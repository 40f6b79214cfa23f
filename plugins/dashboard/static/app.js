// celeriac dashboard: small vanilla JS, no libraries. Pages render from the JSON API and
// refresh themselves when the server-sent event stream (/api/stream) reports a change.
"use strict";

const PAGE = document.body.dataset.page;
const ARG = document.body.dataset.argument;
const main = document.getElementById("main");
const STATES = ["PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED"];
let settings = { read_only: false };

// -- helpers -----------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, value);
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)celeriac_csrf=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function api(path, options = {}) {
  const init = { headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (options.body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.headers["X-CSRF-Token"] = csrfToken();
    init.body = JSON.stringify(options.body);
  }
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  return data;
}

function toast(text, error = false) {
  const el = document.getElementById("toast");
  el.textContent = text;
  el.className = error ? "error" : "";
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, error ? 8000 : 4000);
}

async function act(label, path, body) {
  try {
    const data = await api(path, { body: body || {} });
    toast(`${label}: ${JSON.stringify(data.reply || data.replies || data.task_id || "ok")}`);
    return data;
  } catch (err) {
    toast(`${label} failed: ${err.message}`, true);
    return null;
  }
}

function fmtTime(ts) {
  if (ts === null || ts === undefined) return "";
  const d = new Date(ts * 1000);
  return d.toLocaleString(undefined, { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}
function fmtSeconds(s) { return s === null || s === undefined ? "" : s < 0.001 ? `${(s * 1e6).toFixed(0)} µs` : s < 1 ? `${(s * 1000).toFixed(1)} ms` : `${s.toFixed(3)} s`; }
function badge(text) { return h("span", { class: `badge ${text}` }, text); }
function blank(v) { return v === null || v === undefined || v === "" || (Array.isArray(v) && !v.length); }
// a definition list of [label, value] pairs; rows without a value are left out
function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter((p) => p && !blank(p[1])).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}
function pretty(value) { return h("pre", {}, value === null || value === undefined ? "—" : typeof value === "string" ? value : JSON.stringify(value, null, 2)); }
function render(...nodes) { main.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false)); }
function debounce(fn, ms) {
  let timer = null;
  return () => { if (timer) return; timer = setTimeout(() => { timer = null; fn(); }, ms); };
}
function form(attrs, fields, label, onsubmit, cls = "") {
  return h("form", { class: `inline control ${attrs.class || ""}`, "data-form": attrs.name, onsubmit: (e) => { e.preventDefault(); onsubmit(new FormData(e.target)); } },
    fields, h("button", { type: "submit", class: cls || "primary" }, label));
}

// -- live updates ------------------------------------------------------------------------

const listeners = [];
function onUpdate(fn) { listeners.push(fn); }
function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/api/stream");
  source.addEventListener("hello", () => { live.textContent = "live"; live.className = "live on"; });
  source.addEventListener("update", (e) => {
    const batch = JSON.parse(e.data);
    for (const fn of listeners) fn(batch);
  });
  // the server dropped notes (this page fell behind): reload its data rather than miss changes
  source.addEventListener("resync", () => { for (const fn of listeners) fn([{ type: "resync" }]); });
  source.onerror = () => { live.textContent = "reconnecting"; live.className = "live off"; };
}

// -- pages -------------------------------------------------------------------------------

const pages = {};

pages.workers = async () => {
  const load = async () => {
    const { workers } = await api("/api/workers");
    const rows = workers.map((w) => h("tr", { "data-worker": w.hostname },
      h("td", {}, h("a", { href: `/workers/${encodeURIComponent(w.hostname)}` }, w.hostname)),
      h("td", {}, badge(w.alive ? "online" : "offline")),
      h("td", {}, w.active ?? ""), h("td", {}, w.processed ?? ""), h("td", {}, w.succeeded),
      h("td", {}, w.failed), h("td", {}, w.retried),
      h("td", {}, (w.loadavg || []).map((x) => Number(x).toFixed(2)).join(" ")),
      h("td", {}, fmtTime(w.last_heartbeat))));
    render(h("h1", {}, "Workers"),
      h("table", { id: "workers" },
        h("thead", {}, h("tr", {}, ["Worker", "Status", "Active", "Processed", "Succeeded", "Failed", "Retried", "Load", "Last heartbeat"].map((t) => h("th", {}, t)))),
        h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No worker seen yet (workers send heartbeats every few seconds)")))));
  };
  await load();
  const refresh = debounce(load, 500);
  onUpdate((batch) => { if (batch.some((n) => n.type === "resync" || n.type.startsWith("worker-") || n.type.startsWith("task-"))) refresh(); });
};

pages.worker = async () => {
  const base = `/api/workers/${encodeURIComponent(ARG)}`;
  const load = async () => {
    const data = await api(base);
    const w = data.worker || {};
    const i = data.inspect || {};
    const stats = i.stats || {};
    const pool = stats.pool || {};
    const poolSize = pool["max-concurrency"] ?? pool.size ?? pool.concurrency ?? "?";
    const queues = i.active_queues || [];
    const registered = Array.isArray(i.registered) ? i.registered : [];
    const conf = i.conf || {};
    const n = (name) => h("input", { type: "number", name, min: 1, value: 1 });
    render(
      h("h1", {}, ARG, " ", badge(w.alive ? "online" : "offline")),
      h("div", { class: "grid" },
        h("section", { class: "card", id: "overview" }, h("h2", {}, "Overview"), facts([
          ["pid", w.pid ?? stats.pid], ["software", [w.sw_ident, w.sw_ver, w.sw_sys].filter(Boolean).join(" ")],
          ["active", w.active ?? (i.active || []).length], ["processed", w.processed], ["succeeded", w.succeeded],
          ["failed", w.failed], ["retried", w.retried], ["load", (w.loadavg || []).join(" ")],
          ["last heartbeat", fmtTime(w.last_heartbeat)], ["reserved", (i.reserved || []).length],
          ["scheduled", (i.scheduled || []).length], ["revoked", (i.revoked || []).length],
        ]), h("div", { class: "row control" }, h("button", { class: "danger", id: "shutdown", onclick: async () => {
          if (confirm(`Shut down ${ARG}?`)) await act("shutdown", `${base}/shutdown`);
        } }, "Shut down"))),
        h("section", { class: "card", id: "pool" }, h("h2", {}, "Pool"),
          facts([["implementation", pool.implementation], ["size", h("span", { id: "pool-size" }, poolSize)],
            ["busy", pool.busy], ["idle", pool.idle], ["processes", (pool.processes || []).join(" ")]]),
          form({ name: "pool-grow" }, [n("n")], "Grow", async (f) => { await act("pool grow", `${base}/pool-grow`, { n: Number(f.get("n")) }); load(); }),
          form({ name: "pool-shrink" }, [n("n")], "Shrink", async (f) => { await act("pool shrink", `${base}/pool-shrink`, { n: Number(f.get("n")) }); load(); }),
          form({ name: "autoscale" }, ["min", h("input", { type: "number", name: "min", min: 0, value: 1 }), "max", h("input", { type: "number", name: "max", min: 1, value: 4 })], "Autoscale",
            async (f) => { await act("autoscale", `${base}/autoscale`, { min: Number(f.get("min")), max: Number(f.get("max")) }); load(); })),
        h("section", { class: "card", id: "queues" }, h("h2", {}, "Consumed queues"),
          h("table", {}, h("tbody", {}, queues.map((q) => {
            const name = typeof q === "string" ? q : q.name;
            return h("tr", {}, h("td", {}, name), h("td", {}, h("button", { class: "control", onclick: async () => {
              await act("cancel consumer", `${base}/cancel-consumer`, { queue: name }); load();
            } }, "Cancel")));
          }))),
          form({ name: "add-consumer" }, [h("input", { name: "queue", placeholder: "queue name", required: true })], "Add consumer",
            async (f) => { await act("add consumer", `${base}/add-consumer`, { queue: f.get("queue") }); load(); })),
      ),
      h("section", { class: "card", id: "registered" }, h("h2", {}, "Registered tasks"),
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Task"), h("th", { class: "control" }, "Rate limit"), h("th", { class: "control" }, "Time limits (s)"))),
          h("tbody", {}, registered.map((name) => h("tr", {}, h("td", { class: "mono" }, name),
            h("td", { class: "control" }, form({ name: "rate-limit" }, [h("input", { name: "rate", placeholder: "10/m or empty", size: 10 })], "Set",
              (f) => act(`rate limit ${name}`, `${base}/rate-limit`, { task_name: name, rate: f.get("rate") || null }), "secondary")),
            h("td", { class: "control" }, form({ name: "time-limit" }, [h("input", { type: "number", name: "soft", placeholder: "soft", step: "any", min: 0 }), h("input", { type: "number", name: "hard", placeholder: "hard", step: "any", min: 0 })], "Set",
              (f) => act(`time limit ${name}`, `${base}/time-limit`, { task_name: name, soft: f.get("soft") || null, hard: f.get("hard") || null }), "secondary"))))))),
      h("div", { class: "grid" },
        h("section", { class: "card", id: "conf" }, h("h2", {}, "Configuration (secrets masked)"),
          h("table", {}, h("tbody", {}, Object.entries(conf).sort().map(([k, v]) => h("tr", {}, h("td", { class: "mono" }, k), h("td", { class: "mono" }, typeof v === "string" ? v : JSON.stringify(v))))))),
        h("section", { class: "card", id: "stats" }, h("h2", {}, "Stats"), pretty(stats)),
        h("section", { class: "card", id: "active" }, h("h2", {}, "Active tasks"), pretty(i.active))));
  };
  await load();
  const refresh = debounce(async () => {
    const { workers } = await api("/api/workers");
    const w = workers.find((x) => x.hostname === ARG);
    const el = document.querySelector("h1 .badge");
    if (w && el) { el.textContent = w.alive ? "online" : "offline"; el.className = `badge ${w.alive ? "online" : "offline"}`; }
  }, 1000);
  onUpdate((batch) => { if (batch.some((n) => n.type === "resync" || n.hostname === ARG)) refresh(); });
};

pages.tasks = async () => {
  const params = new URLSearchParams(location.search);
  const q = { state: params.get("state") || "", name: params.get("name") || "", worker: params.get("worker") || "", search: params.get("search") || "",
    since: params.get("since") || "", until: params.get("until") || "", sort: params.get("sort") || "timestamp", order: params.get("order") || "desc",
    offset: Number(params.get("offset") || 0), limit: Number(params.get("limit") || 25) };
  const [{ names }, { workers }] = await Promise.all([api("/api/tasks/names"), api("/api/workers")]);
  const select = (name, options, label) => h("select", { name }, h("option", { value: "" }, label), options.map((o) => h("option", { value: o, selected: o === q[name] }, o)));
  const localInput = (name) => {
    const value = q[name] ? new Date(Number(q[name]) * 1000 - new Date().getTimezoneOffset() * 60000).toISOString().slice(0, 19) : "";
    return h("input", { type: "datetime-local", name, value, step: 1 });
  };
  const filters = h("form", { class: "inline card", id: "filters", onsubmit: (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    for (const key of ["state", "name", "worker", "search"]) q[key] = f.get(key) || "";
    for (const key of ["since", "until"]) q[key] = f.get(key) ? String(new Date(f.get(key)).getTime() / 1000) : "";
    q.offset = 0;
    load();
  } }, select("state", STATES, "any state"), select("name", names, "any task"), select("worker", workers.map((w) => w.hostname), "any worker"),
  "from", localInput("since"), "to", localInput("until"),
  h("input", { name: "search", placeholder: "search args, kwargs, result", value: q.search, size: 28 }), h("button", { type: "submit", class: "primary" }, "Filter"));
  const sender = h("details", { class: "card control" }, h("summary", {}, "Send a task"),
    form({ name: "send" }, [h("input", { name: "name", placeholder: "task name", required: true, list: "task-names" }),
      h("datalist", { id: "task-names" }, names.map((n) => h("option", { value: n }))),
      h("input", { name: "args", placeholder: "args (JSON array)", value: "[]" }), h("input", { name: "kwargs", placeholder: "kwargs (JSON object)", value: "{}" }),
      h("input", { name: "queue", placeholder: "queue (optional)" }), h("input", { type: "number", name: "countdown", placeholder: "countdown s", step: "any", min: 0 })], "Send",
    async (f) => {
      let args, kwargs;
      try { args = JSON.parse(f.get("args") || "[]"); kwargs = JSON.parse(f.get("kwargs") || "{}"); } catch (err) { toast(`args/kwargs: ${err.message}`, true); return; }
      const data = await act("send", "/api/tasks/send", { name: f.get("name"), args, kwargs, queue: f.get("queue") || null, countdown: f.get("countdown") || null });
      if (data) toast(`sent ${data.task_id}`);
    }));
  const columns = [["uuid", "Id"], ["name", "Name"], ["state", "State"], [null, "Args"], [null, "Result"], ["worker", "Worker"], ["received", "Received"], ["started", "Started"], ["runtime", "Runtime"]];
  const table = h("table", { id: "tasks" });
  const pager = h("div", { class: "pager" });
  const seen = new Set();
  let first = true;
  render(h("h1", {}, "Tasks"), filters, sender, table, pager);
  async function load() {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(q)) if (value !== "" && value !== null) query.set(key, value);
    history.replaceState(null, "", `/tasks?${query}`);
    const data = await api(`/api/tasks?${query}`);
    const head = h("tr", {}, columns.map(([key, label]) => h("th", {
      class: key ? `sortable ${q.sort === key ? `sorted ${q.order}` : ""}` : "", "data-sort": key,
      onclick: key ? () => { q.order = q.sort === key && q.order === "desc" ? "asc" : "desc"; q.sort = key; q.offset = 0; load(); } : null,
    }, label)));
    const rows = data.tasks.map((t) => h("tr", { "data-task": t.uuid, class: !first && !seen.has(t.uuid) ? "fresh" : "" },
      h("td", { class: "mono" }, h("a", { href: `/tasks/${t.uuid}` }, t.uuid)), h("td", { class: "mono" }, t.name || ""),
      h("td", {}, badge(t.state)), h("td", { class: "mono" }, `${t.args ?? ""} ${t.kwargs && t.kwargs !== "{}" ? t.kwargs : ""}`),
      h("td", { class: "mono" }, t.result ?? t.exception ?? ""), h("td", {}, t.worker || ""),
      h("td", {}, fmtTime(t.received)), h("td", {}, fmtTime(t.started)), h("td", {}, fmtSeconds(t.runtime))));
    for (const t of data.tasks) seen.add(t.uuid);
    first = false;
    table.replaceChildren(h("thead", {}, head), h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, "No tasks match"))));
    const pages = Math.max(1, Math.ceil(data.total / q.limit));
    const page = Math.floor(q.offset / q.limit) + 1;
    pager.replaceChildren(
      h("button", { disabled: page <= 1, onclick: () => { q.offset = Math.max(0, q.offset - q.limit); load(); } }, "‹ Previous"),
      h("span", { id: "page-info" }, `page ${page} of ${pages} · ${data.total} tasks`),
      h("button", { disabled: page >= pages, onclick: () => { q.offset += q.limit; load(); } }, "Next ›"),
      h("select", { onchange: (e) => { q.limit = Number(e.target.value); q.offset = 0; load(); } }, [10, 25, 50, 100, 200].map((n) => h("option", { value: n, selected: n === q.limit }, `${n} per page`))));
  }
  await load();
  const refresh = debounce(load, 500);
  onUpdate((batch) => { if (batch.some((n) => n.type === "resync" || n.type.startsWith("task-"))) refresh(); });
};

pages.task = async () => {
  const load = async () => {
    let t;
    try { t = await api(`/api/tasks/${encodeURIComponent(ARG)}`); } catch (err) {
      render(h("h1", {}, ARG), h("p", { class: "muted" }, `${err.message}. It appears here once a worker reports it.`));
      return;
    }
    const result = await api(`/api/tasks/${encodeURIComponent(ARG)}/result`).catch(() => null);
    const link = (id) => (id && id !== t.uuid ? h("a", { class: "mono", href: `/tasks/${id}` }, id) : id ? h("span", { class: "mono" }, id) : "");
    const running = t.state === "STARTED";
    const final = ["SUCCESS", "FAILURE", "REVOKED", "REJECTED"].includes(t.state);
    render(
      h("h1", {}, t.name || "task", " ", badge(t.state)),
      h("div", { class: "row control", id: "task-actions" },
        h("button", { class: "danger", id: "revoke", disabled: final, onclick: async () => { await act("revoke", `/api/tasks/${t.uuid}/revoke`, { terminate: false, name: t.name || null }); load(); } }, "Revoke"),
        h("button", { class: "danger", id: "terminate", disabled: !running, onclick: async () => {
          if (confirm("Terminate the running task?")) { await act("terminate", `/api/tasks/${t.uuid}/revoke`, { terminate: true, signal: "SIGTERM", name: t.name || null }); load(); }
        } }, "Terminate")),
      h("div", { class: "grid" },
        h("section", { class: "card", id: "details" }, h("h2", {}, "Details"), facts([
          ["id", h("span", { class: "mono" }, t.uuid)], ["name", t.name], ["state", t.state], ["worker", t.worker ? h("a", { href: `/workers/${encodeURIComponent(t.worker)}` }, t.worker) : ""],
          ["queue", t.queue], ["retries", t.retries], ["eta", t.eta], ["expires", t.expires],
          ["sent", fmtTime(t.sent)], ["received", fmtTime(t.received)], ["started", fmtTime(t.started)],
          ["finished", fmtTime(t.succeeded ?? t.failed ?? t.revoked ?? t.rejected)], ["runtime", fmtSeconds(t.runtime)],
          ["parent", link(t.parent_id)], ["root", link(t.root_id)],
          ["children", (t.children || []).length ? h("span", {}, t.children.map((c) => [link(c), " "])) : null],
        ])),
        h("section", { class: "card", id: "arguments" }, h("h2", {}, "Arguments"), facts([["args", h("span", { class: "mono" }, t.args ?? "")], ["kwargs", h("span", { class: "mono" }, t.kwargs ?? "")]]),
          h("h2", {}, "Result"), h("div", { id: "result" }, pretty(t.result ?? (result ? result.result : null))),
          result ? h("p", { class: "muted" }, `result store: ${result.state}`) : null)),
      t.exception || t.traceback ? h("section", { class: "card", id: "exception" }, h("h2", {}, "Exception"), pretty(t.exception), h("h2", {}, "Traceback"), pretty(t.traceback)) : null);
  };
  await load();
  const refresh = debounce(load, 300);
  onUpdate((batch) => { if (batch.some((n) => n.type === "resync" || n.uuid === ARG)) refresh(); });
};

pages.queues = async () => {
  const load = async () => {
    const { queues } = await api("/api/queues");
    render(h("h1", {}, "Queues"), h("table", { id: "queues" },
      h("thead", {}, h("tr", {}, h("th", {}, "Queue"), h("th", {}, "Messages waiting"), h("th", {}, "Consumers"))),
      h("tbody", {}, queues.map((q) => h("tr", { "data-queue": q.name }, h("td", { class: "mono" }, q.name),
        h("td", { class: "length" }, q.length ?? "?"), h("td", {}, q.consumers.join(", ") || h("span", { class: "muted" }, "none")))))));
  };
  await load();
  onUpdate((batch) => {
    if (batch.some((n) => n.type === "resync")) { load(); return; }
    for (const note of batch) {
      if (note.type !== "queues") continue;
      for (const [name, length] of Object.entries(note.lengths)) {
        const cell = document.querySelector(`tr[data-queue="${CSS.escape(name)}"] .length`);
        if (cell) cell.textContent = length;
      }
    }
  });
};

const COLORS = ["#2f6f3e", "#b42318", "#1e5aa8", "#b54708", "#6d28d9", "#0e7490", "#be185d", "#4d7c0f"];

function lineChart(series, opts = {}) {
  const W = 800, H = 220, L = 44, R = 10, T = 10, B = 24;
  const points = series.flatMap((s) => s.points);
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.label || "chart" });
  if (!points.length) {
    chart.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data yet"));
    return chart;
  }
  const x0 = opts.x0 ?? Math.min(...points.map((p) => p[0])), x1 = opts.x1 ?? Math.max(...points.map((p) => p[0]));
  const y1 = Math.max(1, ...points.map((p) => p[1]));
  const sx = (x) => L + ((x - x0) / Math.max(1e-9, x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - (y / y1) * (H - T - B);
  for (let k = 0; k <= 4; k++) {
    const y = (y1 * k) / 4;
    chart.append(svg("line", { x1: L, x2: W - R, y1: sy(y), y2: sy(y), stroke: "#eceef1" }),
      svg("text", { x: L - 6, y: sy(y) + 4, "text-anchor": "end" }, Number.isInteger(y) ? y : y.toFixed(1)));
  }
  for (let k = 0; k <= 4; k++) {
    const x = x0 + ((x1 - x0) * k) / 4;
    chart.append(svg("text", { x: sx(x), y: H - 6, "text-anchor": "middle" }, new Date(x * 1000).toLocaleTimeString(undefined, { hour12: false })));
  }
  series.forEach((s, index) => {
    if (!s.points.length) return;
    const d = s.points.map((p, k) => `${k ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    chart.append(svg("path", { d, fill: "none", stroke: s.color || COLORS[index % COLORS.length], "stroke-width": 2 }));
  });
  return chart;
}

function legend(series) {
  return h("div", { class: "legend" }, series.map((s, index) => {
    const swatch = h("i");
    swatch.style.background = s.color || COLORS[index % COLORS.length];
    return h("span", {}, swatch, s.name);
  }));
}

function barChart(rows) {
  const W = 800, rowH = 26, L = 260, R = 80;
  const H = Math.max(40, rows.length * rowH + 10);
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "runtime percentiles" });
  chart.style.height = `${H}px`;
  if (!rows.length) { chart.append(svg("text", { x: W / 2, y: 24, "text-anchor": "middle" }, "no finished tasks yet")); return chart; }
  const max = Math.max(1e-6, ...rows.map((r) => r.p99));
  rows.forEach((r, k) => {
    const y = 5 + k * rowH;
    const scale = (v) => (v / max) * (W - L - R);
    chart.append(svg("text", { x: L - 8, y: y + 16, "text-anchor": "end" }, `${r.name} (${r.count})`));
    [["p99", "#f5c2c0"], ["p90", "#f7d79e"], ["p50", "#9bd3ad"]].forEach(([key, color]) =>
      chart.append(svg("rect", { x: L, y: y + 3, width: Math.max(1, scale(r[key])), height: rowH - 8, fill: color }, svg("title", {}, `${key} ${fmtSeconds(r[key])}`))));
    chart.append(svg("text", { x: L + scale(r.p99) + 6, y: y + 16 }, `p50 ${fmtSeconds(r.p50)} · p99 ${fmtSeconds(r.p99)}`));
  });
  return chart;
}

pages.graphs = async () => {
  const load = async () => {
    const g = await api("/api/graphs");
    const x0 = g.now - Math.min(g.window, 300), x1 = g.now;
    const recent = g.throughput.filter((p) => p.time >= x0);
    const throughput = [
      { name: "succeeded / s", color: "#2f6f3e", points: recent.map((p) => [p.time, p.succeeded]) },
      { name: "failed / s", color: "#b42318", points: recent.map((p) => [p.time, p.failed]) },
    ];
    const queueNames = [...new Set(g.queues.flatMap((s) => Object.keys(s.lengths)))].sort();
    const queues = queueNames.map((name) => ({ name, points: g.queues.filter((s) => s.time >= x0 && name in s.lengths).map((s) => [s.time, s.lengths[name]]) }));
    const runtimes = Object.entries(g.runtimes).map(([name, r]) => ({ name, ...r }));
    render(h("h1", {}, "Graphs"),
      h("section", { class: "card", id: "throughput" }, h("h2", {}, "Tasks finished per second (last 5 minutes)"), lineChart(throughput, { x0, x1, label: "throughput" }), legend(throughput)),
      h("section", { class: "card", id: "runtimes" }, h("h2", {}, "Runtime percentiles by task (p50 / p90 / p99)"), barChart(runtimes)),
      h("section", { class: "card", id: "queue-lengths" }, h("h2", {}, "Queue lengths (last 5 minutes)"), lineChart(queues, { x0, x1, label: "queue lengths" }), legend(queues)));
  };
  await load();
  onUpdate(debounce(load, 2000));
};

// -- start -------------------------------------------------------------------------------

(async () => {
  for (const link of document.querySelectorAll("nav a")) if (link.dataset.nav.split(" ").includes(PAGE)) link.classList.add("current");
  try { settings = await api("/api/settings"); } catch (err) { /* keep defaults */ }
  if (settings.read_only) document.body.classList.add("readonly");
  connect();
  try {
    await pages[PAGE]();
  } catch (err) {
    render(h("h1", {}, "Error"), h("p", {}, err.message));
  }
})();
