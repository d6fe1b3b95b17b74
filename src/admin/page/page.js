// weir's status page. The page holds no data: this script reads the admin API with the token
// the operator pastes (kept in this tab's sessionStorage, sent as a Bearer header, never a
// cookie) and renders it, refreshing every few seconds without reloading the page.
"use strict";

const TOKEN_KEY = "weir.admin_token";
const REFRESH_MS = 2000;

/** The pipeline named in /pipelines/{name}, or null on / (every pipeline). */
const ONLY = (() => {
  const m = location.pathname.match(/^\/pipelines\/([^/]+)\/?$/);
  return m ? decodeURIComponent(m[1]) : null;
})();

let scope = null;
let timer = null;
const cards = new Map();

class ApiError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes, never markup). */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** One admin API call with the Bearer token; a non-2xx answer throws an ApiError. */
async function api(method, path, body = null, contentType = null) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (contentType) headers["Content-Type"] = contentType;
  const resp = await fetch(path, {
    method,
    headers,
    body,
    credentials: "omit",
    cache: "no-store",
  });
  if (!resp.ok) {
    let body = {};
    try {
      body = await resp.json();
    } catch (_) {
      // not the JSON error shape: keep the status
    }
    throw new ApiError(resp.status, body.error, body.message);
  }
  return resp;
}

function showSignIn(message) {
  clearTimeout(timer);
  timer = null;
  scope = null;
  cards.clear();
  $("pipelines").replaceChildren();
  $("who").hidden = true;
  $("updated").hidden = true;
  $("banner").hidden = true;
  $("sign-in").hidden = false;
  const err = $("sign-in-error");
  err.textContent = message || "";
  err.hidden = !message;
  $("token").focus();
}

async function signIn(t) {
  sessionStorage.setItem(TOKEN_KEY, t);
  let who;
  try {
    who = await (await api("GET", "/admin/whoami")).json();
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (e.status === 401) {
      showSignIn(
        "That token was not accepted (401 unauthorized). Check it against [admin.tokens] in weir's config.",
      );
    } else {
      showSignIn(`Could not sign in: ${e.message}`);
    }
    return;
  }
  scope = who.scope;
  $("sign-in").hidden = true;
  $("who-name").textContent = who.token;
  $("who-scope").textContent = who.scope;
  $("who").hidden = false;
  document.body.dataset.scope = who.scope;
  await refresh();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  delete document.body.dataset.scope;
  showSignIn("");
}

// ---- formatting

function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function clock(iso) {
  const d = new Date(iso);
  return `${d.toLocaleDateString()} ${d.toLocaleTimeString()}`;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = -1;
  do {
    v /= 1024;
    u += 1;
  } while (v >= 1024 && u < units.length - 1);
  return `${v.toFixed(1)} ${units[u]}`;
}

// ---- one pipeline's card, built once and updated in place

const COUNTERS = [
  ["accepted", "accepted"],
  ["ignored", "ignored"],
  ["rejected", "rejected"],
  ["delivered", "delivered"],
  ["runs_ok", "runs ok"],
  ["failed_runs", "failed runs"],
  ["dead_lettered", "dead-lettered"],
  ["removed", "removed"],
];

const ACTIONS = [
  ["pause", "Pause", "PATCH", "pause"],
  ["resume", "Resume", "PATCH", "resume"],
  ["flush", "Flush now", "POST", "flush"],
  ["download", "Download dead letters", "GET", "dead-letter"],
  ["requeue", "Requeue dead letters", "POST", "dead-letter/requeue"],
];

function card(name) {
  if (cards.has(name)) return cards.get(name);
  const f = {};
  const field = (key, tag = "span", cls = "") => (f[key] = el(tag, { class: cls, "data-field": key }));
  const base = `/admin/pipelines/${encodeURIComponent(name)}`;

  const actions = el("div", { class: "actions", "data-field": "actions" });
  for (const [key, label, method, path] of ACTIONS) {
    const b = el("button", { type: "button", "data-action": key, text: label });
    b.addEventListener("click", () => act(name, key, method, `${base}/${path}`));
    f[`action_${key}`] = b;
    actions.append(b);
  }
  actions.hidden = scope !== "write";

  const counters = el("dl", { class: "counters" });
  for (const [key, label] of COUNTERS) {
    counters.append(el("div", {}, el("dt", { text: label }), field(`counter_${key}`, "dd")));
    f[`counter_${key}`].dataset.counter = key;
  }

  const section = el(
    "section",
    { class: "pipeline", "data-pipeline": name },
    el(
      "header",
      {},
      el("h2", {}, el("a", { href: `/pipelines/${encodeURIComponent(name)}`, text: name })),
      field("state", "span", "state"),
      field("since", "span", "since"),
    ),
    field("worker", "p", "error"),
    actions,
    field("notice", "p", "notice"),
    el(
      "div",
      { class: "facts" },
      el(
        "div",
        { class: "queue" },
        el("h3", { text: "Queue" }),
        el("div", {}, "rows ", field("rows"), " ", field("rows_meter", "meter")),
        el("div", {}, "bytes ", field("bytes"), " ", field("bytes_meter", "meter")),
        el("div", {}, "oldest row ", field("oldest")),
      ),
      el(
        "div",
        { class: "next" },
        el("h3", { text: "Runs" }),
        el("div", {}, "schedule ", field("schedule")),
        el("div", {}, "next run ", field("next_run")),
        el("div", {}, "failing since ", field("failing_since")),
      ),
      el("div", { class: "counts" }, el("h3", { text: "Counters" }), counters),
    ),
    el(
      "figure",
      { class: "chart" },
      field("chart", "div", "chart-box"),
      el(
        "figcaption",
        {},
        "rows per minute, last hour: ",
        el("span", { class: "key accepted", text: "accepted" }),
        " ",
        el("span", { class: "key delivered", text: "delivered" }),
      ),
    ),
    el("h3", { text: "Last runs" }),
    el(
      "table",
      { class: "runs" },
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          ...["time", "rows", "job id", "outcome", "error", "took"].map((h) => el("th", { text: h })),
        ),
      ),
      field("runs", "tbody"),
    ),
  );
  section.append(tryBox(name, base, f));
  f.actions = actions;
  f.section = section;
  cards.set(name, f);
  $("pipelines").append(section);
  return f;
}

// ---- "try a payload": a dry run through the admin API, nothing queued

const MEDIA = [
  ["application/json", "JSON (an object or an array of objects)"],
  ["application/x-ndjson", "NDJSON (one object per line)"],
  ["application/x-www-form-urlencoded", "form (a=1&b=2)"],
];

function tryBox(name, base, f) {
  const media = el("select", { "data-field": "try_media", "aria-label": "payload format" });
  for (const [value, label] of MEDIA) media.append(el("option", { value, text: label }));
  const payload = el("textarea", {
    "data-field": "try_payload",
    rows: "5",
    spellcheck: "false",
    "aria-label": "payload",
    placeholder: '{"OrderId": "0145632053", "Quantity": 3}',
  });
  const run = el("button", { type: "button", "data-action": "try", text: "Dry run" });
  const out = el("div", { class: "try-out", "data-field": "try_out" });
  run.addEventListener("click", () => tryPayload(name, base, media.value, payload.value, out));
  f.try_out = out;
  return el(
    "details",
    { class: "try" },
    el("summary", { text: "Try a payload" }),
    el(
      "p",
      { class: "muted" },
      "What this pipeline would make of a webhook body: each row's verdict, the table and the exact upload. " +
        "Nothing is queued or counted; the sender check is not applied here.",
    ),
    el("div", { class: "try-form" }, media, run),
    payload,
    out,
  );
}

async function tryPayload(name, base, media, payload, out) {
  out.replaceChildren(el("p", { class: "muted", text: "…" }));
  let d;
  try {
    d = await (await api("POST", `${base}/dry-run`, payload, media)).json();
  } catch (e) {
    if (e.status === 401) return showSignIn("The token is no longer accepted (401): sign in again.");
    out.replaceChildren(
      el("p", { class: "error", "data-field": "try_error", text: `${e.message}${e.code ? ` (${e.code})` : ""}` }),
    );
    return;
  }
  const verdicts = d.rows.map((r) =>
    el(
      "tr",
      { "data-verdict": r.verdict },
      el("td", { class: "verdict", text: r.verdict.replace("_", " ") }),
      el("td", { text: r.reason || "" }),
      el("td", {}, el("code", { text: JSON.stringify(r.row) })),
    ),
  );
  const parts = [
    el("p", {
      "data-field": "try_summary",
      text: `A real request would be answered ${d.status}: ${d.accepted} accepted, ${d.ignored} ignored.`,
    }),
    el(
      "table",
      { class: "verdicts" },
      el("thead", {}, el("tr", {}, ...["verdict", "why", "row"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...verdicts),
    ),
  ];
  if (d.columns && d.columns.length) {
    const cols = d.columns.map((c) => {
      const size = c.type === "STRING" ? `(${c.length})` : c.type === "FLOAT" ? `(${c.decimals})` : "";
      return `${c.name} ${c.type}${size}${c.key ? " key" : ""}`;
    });
    parts.push(el("p", {}, `${d.table ? `table ${d.table}: ` : ""}`, el("code", { text: cols.join(", ") })));
  }
  for (const chunk of d.csv || []) parts.push(el("pre", { class: "csv", "data-field": "try_csv", text: chunk }));
  for (const chunk of d.deleted_csv || []) parts.push(el("pre", { class: "csv deleted", text: chunk }));
  for (const c of d.parquet || []) parts.push(el("p", { text: `Parquet chunk: ${c.rows} rows, ${bytes(c.bytes)}` }));
  out.replaceChildren(...parts);
}

function update(p, now) {
  const f = card(p.name);
  f.state.textContent = p.state;
  f.state.dataset.state = p.state;
  f.since.textContent = `since ${clock(p.state_since)} (${ago(now - Date.parse(p.state_since))})`;
  f.worker.textContent =
    p.worker === "stopped" ? `The worker stopped: rows are no longer delivered. ${p.worker_error || ""}` : "";
  f.worker.hidden = p.worker !== "stopped";

  f.actions.hidden = scope !== "write";
  f.action_pause.disabled = p.paused;
  f.action_resume.disabled = !p.paused;
  f.action_flush.disabled = p.paused;

  const q = p.queue;
  f.rows.textContent = `${q.rows} / ${q.capacity_rows}`;
  f.rows_meter.max = q.capacity_rows;
  f.rows_meter.value = q.rows;
  f.rows_meter.high = q.capacity_rows * 0.8;
  if (q.capacity_bytes == null) {
    f.bytes.textContent = `${bytes(q.bytes)} (no byte limit)`;
    f.bytes_meter.hidden = true;
  } else {
    f.bytes.textContent = `${bytes(q.bytes)} / ${bytes(q.capacity_bytes)}`;
    f.bytes_meter.max = q.capacity_bytes;
    f.bytes_meter.value = q.bytes;
    f.bytes_meter.high = q.capacity_bytes * 0.8;
  }
  f.oldest.textContent = q.oldest_age_seconds == null ? "none queued" : `${ago(q.oldest_age_seconds * 1000)} old`;

  f.schedule.textContent = p.schedule;
  f.next_run.textContent = p.paused
    ? "none while paused"
    : p.next_run_at
      ? `${clock(p.next_run_at)} (in ${ago(Date.parse(p.next_run_at) - now)})`
      : "not scheduled";
  f.failing_since.textContent = p.failing_since ? clock(p.failing_since) : "—";

  for (const [key] of COUNTERS) f[`counter_${key}`].textContent = String(p.counters[key] ?? 0);

  const rows = (p.recent_runs || []).map((r) =>
    el(
      "tr",
      { "data-outcome": r.outcome },
      el("td", { text: clock(r.at) }),
      el("td", { class: "num", text: String(r.rows) }),
      el("td", { class: "job", text: r.job_id || "—" }),
      el("td", { class: "outcome", text: r.outcome }),
      el("td", { class: "err", text: r.error || "" }),
      el("td", { class: "num", text: `${r.duration_ms} ms` }),
    ),
  );
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: "6", class: "muted", text: "no run yet" })));
  f.runs.replaceChildren(...rows);
}

async function drawChart(name) {
  const f = cards.get(name);
  const text = await (await api("GET", `/admin/pipelines/${encodeURIComponent(name)}/chart.svg`)).text();
  const doc = new DOMParser().parseFromString(text, "image/svg+xml");
  const svg = doc.documentElement;
  if (svg.nodeName !== "svg") throw new Error("the chart is not SVG");
  f.chart.replaceChildren(document.importNode(svg, true));
}

async function act(name, key, method, path) {
  const f = cards.get(name);
  if (key === "requeue" && !confirm(`Queue every dead-lettered row of ${name} again?`)) return;
  f.notice.textContent = "…";
  f.notice.className = "notice";
  try {
    const resp = await api(method, path);
    if (key === "download") {
      const blob = await resp.blob();
      const a = el("a", { href: URL.createObjectURL(blob), download: `${name}-dead-letter.csv` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
      f.notice.textContent = `dead letters downloaded (${bytes(blob.size)})`;
    } else {
      const body = await resp.json();
      f.notice.textContent = {
        pause: () => "paused: rows are still accepted, nothing is delivered",
        resume: () => "resumed",
        flush: () =>
          `flush: ${body.outcome}, ${body.rows} rows${body.job_id ? `, job ${body.job_id}` : ""}${
            body.error ? `: ${body.error}` : ""
          }`,
        requeue: () => `${body.requeued} dead-lettered rows queued again`,
      }[key]();
    }
  } catch (e) {
    if (e.status === 401) return showSignIn("The token is no longer accepted (401): sign in again.");
    f.notice.textContent = `${key} failed: ${e.message}${e.code ? ` (${e.code})` : ""}`;
    f.notice.className = "notice error";
  }
  await refresh();
}

async function refresh() {
  clearTimeout(timer);
  if (!token() || scope === null) return;
  try {
    const body = await (await api("GET", "/admin/pipelines")).json();
    const now = Date.now();
    const shown = body.pipelines.filter((p) => ONLY === null || p.name === ONLY);
    if (ONLY !== null && shown.length === 0) {
      $("banner").textContent = `weir has no pipeline named "${ONLY}".`;
      $("banner").hidden = false;
    } else {
      $("banner").hidden = true;
    }
    for (const p of shown) update(p, now);
    await Promise.all(shown.map((p) => drawChart(p.name)));
    $("updated").textContent = `updated ${new Date(now).toLocaleTimeString()}, every ${REFRESH_MS / 1000} s`;
    $("updated").hidden = false;
  } catch (e) {
    if (e.status === 401) return showSignIn("The token is no longer accepted (401): sign in again.");
    $("banner").textContent = `Could not read weir's admin API: ${e.message}. Retrying.`;
    $("banner").hidden = false;
  }
  // An action's refresh may overlap the timer's: whichever ends last keeps the one timer.
  clearTimeout(timer);
  timer = setTimeout(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token").value.trim();
    $("token").value = "";
    if (t) signIn(t);
  });
  $("sign-out").addEventListener("click", signOut);
  const t = token();
  if (t) signIn(t);
  else showSignIn("");
});
