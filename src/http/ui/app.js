// Lethe admin page. Plain JavaScript, no framework and no build step: it talks to the admin
// API with the signed-in token and renders with DOM calls (data is never parsed as HTML, so
// nothing an API returns can inject markup).
"use strict";

const TOKEN_KEY = "lethe-admin-token";
const WATCH_MS = 2000;
const AUDIT_PAGE = 50;

const $ = (selector) => document.querySelector(selector);

/** Creates an element with text and attributes; children may be nodes or strings. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== undefined && child !== null) node.append(child);
  }
  return node;
}

// ---- API ----

class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? problem.detail : `HTTP ${status}`);
    this.status = status;
    this.code = problem && problem.code;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    signOut("Your token was not accepted (expired or revoked?). Sign in again.");
    throw new ApiError(401, { detail: "unauthorized" });
  }
  const type = response.headers.get("content-type") || "";
  if (!response.ok) {
    const problem = type.includes("json") ? await response.json().catch(() => null) : null;
    throw new ApiError(response.status, problem);
  }
  if (type.includes("json")) return response.json();
  return response.text();
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "" && value !== false) search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// ---- formatting ----

function when(iso) {
  if (!iso) return "—";
  return iso.replace("T", " ").replace(/\.\d+/, "").replace(/(Z|\+00:00)$/, " UTC");
}

function duration(secs) {
  if (secs === null || secs === undefined) return "—";
  if (secs < 1) return `${Math.round(secs * 1000)} ms`;
  if (secs < 120) return `${secs.toFixed(1)} s`;
  if (secs < 7200) return `${(secs / 60).toFixed(1)} min`;
  if (secs < 172800) return `${(secs / 3600).toFixed(1)} h`;
  return `${(secs / 86400).toFixed(1)} days`;
}

/** Who filed an erasure request: a retention policy, or a person ("request"). */
function origin(e) {
  return e.retention_policy ? `policy ${e.retention_policy}` : "request";
}

function statusBadge(status) {
  return el("span", { class: `status ${status}`, text: status.replace(/_/g, " ") });
}

function toast(message, isError = false) {
  const node = $("#toast");
  node.className = isError ? "error" : "";
  node.textContent = message;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { node.textContent = ""; }, 6000);
}

function fail(error) {
  if (error instanceof ApiError && error.status === 401) return;
  const code = error instanceof ApiError && error.code ? ` (${error.code})` : "";
  toast(`${error.message}${code}`, true);
}

/** Runs `action` with the form's submit button disabled; errors go to the toast. */
function busy(form, action) {
  return async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    try {
      await action(new FormData(form));
    } catch (error) {
      fail(error);
    } finally {
      if (button) button.disabled = false;
    }
  };
}

/** A date input's value as the RFC 3339 start of that day (UTC). */
function dayStart(value) {
  return value ? `${value}T00:00:00Z` : undefined;
}

/** A date input's value as the RFC 3339 start of the next day, so "to" includes its day. */
function dayAfter(value) {
  if (!value) return undefined;
  const next = new Date(`${value}T00:00:00Z`);
  next.setUTCDate(next.getUTCDate() + 1);
  return next.toISOString().replace(/\.\d+Z$/, "Z");
}

// ---- sign in ----

async function signIn(candidate) {
  sessionStorage.setItem(TOKEN_KEY, candidate);
  try {
    await api("GET", "/admin/erasures?limit=1");
  } catch (error) {
    sessionStorage.removeItem(TOKEN_KEY);
    const message = error instanceof ApiError && error.status === 403
      ? "This token is valid but does not have the admin role."
      : error instanceof ApiError && error.status === 401
        ? "This token is not valid."
        : `Could not reach Lethe: ${error.message}`;
    $("#sign-in-error").textContent = message;
    return;
  }
  showApp();
}

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  stopWatching();
  $("#app").hidden = true;
  $("#signed-in").hidden = true;
  $("#sign-in").hidden = false;
  $("#sign-in-error").textContent = message;
  $("#token").value = "";
  $("#token").focus();
}

function showApp() {
  $("#sign-in").hidden = true;
  $("#sign-in-error").textContent = "";
  $("#signed-in").hidden = false;
  $("#app").hidden = false;
  showTab("erasures");
}

// ---- tabs ----

const tabLoaders = {
  erasures: () => loadErasures(),
  forget: () => $("#forget-subject").focus(),
  subjects: () => {},
  retention: () => loadRetention(),
  audit: () => loadAudit(),
  report: () => loadReport(),
};

function showTab(name) {
  for (const button of document.querySelectorAll(".tabs button")) {
    if (button.dataset.tab === name) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  for (const section of document.querySelectorAll(".tab")) {
    section.hidden = section.id !== `tab-${name}`;
  }
  if (name !== "erasures") stopWatching();
  Promise.resolve(tabLoaders[name]()).catch(fail);
}

// ---- erasure requests ----

async function loadErasures() {
  const form = new FormData($("#erasure-filter"));
  const list = await api("GET", `/admin/erasures${query({
    subject: form.get("subject").trim(),
    status: form.get("status"),
    from: dayStart(form.get("from")),
    to: dayAfter(form.get("to")),
    overdue: form.get("overdue") ? "true" : undefined,
    limit: 200,
  })}`);
  const body = $("#erasure-table tbody");
  body.replaceChildren();
  for (const e of list.erasures) {
    const dependents = e.dependents.filter((d) => !d.removed_at);
    const acknowledged = dependents.filter((d) => d.acknowledged_at).length;
    const target = e.kind === "subject" ? `subject ${e.subject}` : `stream ${e.stream}`;
    body.append(el("tr", { "data-request": e.request_id },
      el("td", {}, el("button", {
        type: "button", class: "link", text: when(e.requested_at),
        "aria-label": `Open the request for ${target} made ${when(e.requested_at)}`,
        onclick: () => openErasure(e.request_id),
      })),
      el("td", { text: target }),
      el("td", {}, statusBadge(e.status)),
      el("td", { class: "origin", text: origin(e) }),
      el("td", { class: "num", text: String(e.keys_destroyed) }),
      el("td", { class: "num", text: dependents.length ? `${acknowledged} / ${dependents.length}` : "none" }),
      el("td", { class: e.overdue ? "overdue" : "", text: `${when(e.deadline)}${e.overdue ? " (overdue)" : ""}` }),
    ));
  }
  $("#erasure-empty").hidden = list.erasures.length > 0;
}

let watching = null;

function stopWatching() {
  if (watching) clearTimeout(watching);
  watching = null;
}

/** Shows one request and, until it is finished, refreshes it every few seconds. */
async function openErasure(id) {
  stopWatching();
  const e = await api("GET", `/admin/erasures/${encodeURIComponent(id)}`);
  renderErasure(e);
  const finished = e.status === "completed" || e.status === "refused";
  $("#detail-watch").textContent = finished ? "" : "Watching: this view refreshes every 2 seconds.";
  if (!finished) {
    watching = setTimeout(() => {
      openErasure(id).then(() => loadErasures()).catch(fail);
    }, WATCH_MS);
  }
}

function renderErasure(e) {
  const section = $("#erasure-detail");
  section.hidden = false;
  section.dataset.request = e.request_id;
  section.dataset.status = e.status;
  $("#detail-title").replaceChildren(
    `Request for ${e.kind === "subject" ? `subject ${e.subject}` : `stream ${e.stream}`} `,
    statusBadge(e.status),
  );
  const facts = [
    ["Request id", e.request_id],
    ["Origin", e.retention_policy ? `Retention policy ${e.retention_policy}` : "Filed on request"],
    ["Reason", e.reason || "—"],
    ["Requested by", e.requested_by || "—"],
    ["Reference", e.reference || "—"],
    ["Streams", e.streams.length ? e.streams.join(", ") : "none"],
    ["Streams with personal fields", e.field_streams === null ? "not yet known"
      : e.field_streams.length ? e.field_streams.join(", ") : "none"],
    ["Keys destroyed", String(e.keys_destroyed)],
    ["Deadline", `${when(e.deadline)}${e.overdue ? " (overdue)" : ""}`],
  ];
  if (e.already_erased) facts.push(["Note", "Nothing left to erase: already forgotten."]);
  $("#detail-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));

  const steps = [];
  const step = (at, text, waiting = false) => steps.push(
    el("li", { class: waiting ? "waiting" : "" }, el("time", { datetime: at || "", text: at ? when(at) : "waiting" }), text));
  step(e.requested_at, `Requested${e.requested_by ? ` by ${e.requested_by}` : ""}.`);
  if (e.status === "refused") step(e.requested_at, `Refused: ${e.refused_reason || "legal hold"}.`);
  if (e.keys_destroyed_at) {
    step(e.keys_destroyed_at, `${e.keys_destroyed} key(s) destroyed; tombstone${e.tombstone_position !== null ? ` at position ${e.tombstone_position}` : ""} written.`);
  } else if (e.status !== "refused") {
    step(null, "Keys to be destroyed.", true);
  }
  for (const d of e.dependents) {
    if (d.acknowledged_at) step(d.acknowledged_at, `Acknowledged by ${d.consumer}.`);
    else if (d.removed_at) step(d.removed_at, `${d.consumer} was removed before acknowledging.`);
    else if (e.keys_destroyed_at) step(null, `Waiting for ${d.consumer} to acknowledge.`, true);
  }
  if (e.completed_at) step(e.completed_at, "Completed.");
  $("#detail-timeline").replaceChildren(...steps);

  const rows = e.dependents.map((d) => el("tr", {},
    el("td", { text: d.consumer }),
    el("td", { text: d.acknowledged_at ? when(d.acknowledged_at) : d.removed_at ? "removed" : "not yet" }),
    el("td", { class: "num", text: String(d.delivery_attempts) }),
    el("td", { text: d.last_delivery_error || "—" }),
  ));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "4", class: "muted", text: "No erasure-dependent consumers were registered." })));
  $("#detail-dependents tbody").replaceChildren(...rows);
}

// ---- filing a request ----

async function fileForget(form) {
  const subject = form.get("subject").trim();
  const body = { reason: form.get("reason").trim(), requested_by: form.get("requested_by").trim() };
  const reference = form.get("reference").trim();
  if (reference) body.reference = reference;
  const result = $("#forget-result");
  try {
    const e = await api("POST", `/admin/subjects/${encodeURIComponent(subject)}/forget`, body);
    result.className = "";
    result.textContent = `Request filed: ${e.status.replace(/_/g, " ")}.`;
    $("#forget-form").reset();
    showTab("erasures");
    await openErasure(e.request_id);
    $("#erasure-detail").scrollIntoView({ block: "nearest" });
  } catch (error) {
    result.className = "error";
    result.textContent = error instanceof ApiError && error.code === "legal_hold"
      ? `Refused: ${error.message}`
      : `Not filed: ${error.message}`;
  }
}

// ---- subjects and holds ----

let currentSubject = null;

async function lookUpSubject(subject) {
  currentSubject = subject;
  const s = await api("GET", `/admin/subjects/${encodeURIComponent(subject)}`);
  $("#subject-view").hidden = false;
  $("#subject-title").textContent = `Subject ${s.subject}`;
  const hold = $("#subject-hold");
  if (s.hold) {
    hold.className = "banner bad";
    hold.textContent = `Legal hold since ${when(s.hold.placed_at)}${s.hold.until ? `, until ${when(s.hold.until)}` : ", until lifted"}: ${s.hold.reason}`;
  } else {
    hold.className = "banner";
    hold.textContent = "No legal hold: this subject can be forgotten.";
  }
  $("#lift-hold").hidden = !s.hold;
  const rows = s.streams.map((st) => el("tr", {},
    el("td", { text: st.stream }), el("td", { text: st.status }),
    el("td", { class: "num", text: st.version === null ? "—" : String(st.version) })));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "3", class: "muted", text: "No streams are bound to this subject." })));
  $("#subject-streams tbody").replaceChildren(...rows);
  const fieldRows = s.field_streams.map((stream) => el("tr", {}, el("td", { text: stream })));
  if (!fieldRows.length) fieldRows.push(el("tr", {}, el("td", { class: "muted", text: "No stream holds personal fields of this subject." })));
  $("#subject-field-streams tbody").replaceChildren(...fieldRows);
}

async function placeHold(form) {
  const body = { reason: form.get("reason").trim() };
  const until = form.get("until");
  if (until) body.until = new Date(`${until}Z`).toISOString();
  await api("PUT", `/admin/subjects/${encodeURIComponent(currentSubject)}/hold`, body);
  $("#hold-form").reset();
  toast("Hold placed.");
  await lookUpSubject(currentSubject);
}

async function liftHold() {
  await api("DELETE", `/admin/subjects/${encodeURIComponent(currentSubject)}/hold`);
  toast("Hold lifted.");
  await lookUpSubject(currentSubject);
}

// ---- retention policies ----

let retentionPolicies = [];

async function loadRetention() {
  const list = await api("GET", "/admin/retention");
  retentionPolicies = list.policies;
  const rows = list.policies.map((p) => el("tr", { "data-policy": p.name },
    el("td", { text: p.name }),
    el("td", { text: p.stream_prefix }),
    el("td", { text: p.keep_for }),
    el("td", { text: p.after === "first_event" ? "first event" : "last event" }),
    el("td", { text: when(p.next_due) }),
    el("td", { text: when(p.updated_at) }),
    el("td", {}, el("button", {
      type: "button", class: "secondary", text: "Remove",
      "aria-label": `Remove the retention policy ${p.name}`,
      onclick: (event) => removePolicy(p.name, event.currentTarget).catch(fail),
    })),
  ));
  $("#retention-table tbody").replaceChildren(...rows);
  $("#retention-empty").hidden = rows.length > 0;
}

async function savePolicy(form) {
  const name = form.get("name").trim();
  const body = {
    stream_prefix: form.get("stream_prefix").trim(),
    keep_for: form.get("keep_for").trim(),
    after: form.get("after"),
  };
  const existed = retentionPolicies.some((p) => p.name === name);
  const result = $("#retention-result");
  try {
    const p = await api("PUT", `/admin/retention/${encodeURIComponent(name)}`, body);
    result.className = "";
    result.textContent = `Policy ${p.name} ${existed ? "replaced" : "created"}.`;
    $("#retention-form").reset();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return;
    result.className = "error";
    result.textContent = `Not saved: ${error.message}`;
  }
  await loadRetention();
}

async function removePolicy(name, button) {
  button.disabled = true;
  try {
    await api("DELETE", `/admin/retention/${encodeURIComponent(name)}`);
    toast(`Retention policy ${name} removed.`);
  } finally {
    button.disabled = false;
  }
  await loadRetention();
}

async function sweepRetention() {
  const button = $("#retention-sweep");
  button.disabled = true;
  try {
    const s = await api("POST", "/admin/retention-sweep", {});
    $("#retention-sweep-result").textContent =
      `Swept ${s.policies} polic${s.policies === 1 ? "y" : "ies"}: ${s.due} subject(s) due, ` +
      `${s.filed} erasure request(s) filed${s.refused ? `, ${s.refused} refused by a legal hold` : ""}.`;
  } finally {
    button.disabled = false;
  }
  await loadRetention();
}

// ---- audit trail ----

let auditOldest = null;

async function verifyAudit() {
  const banner = $("#audit-verify");
  banner.className = "banner";
  banner.textContent = "Verifying…";
  const v = await api("GET", "/admin/audit/verify");
  if (v.intact) {
    banner.className = "banner ok";
    banner.textContent = `Chain intact: ${v.entries} entries verified, head #${v.head_seq}.`;
  } else {
    banner.className = "banner bad";
    banner.textContent = `Chain BROKEN at entry #${v.first_broken_seq} (${v.entries} entries read): the trail was altered.`;
  }
  return v;
}

async function loadAudit() {
  const v = await verifyAudit();
  $("#audit-table tbody").replaceChildren();
  auditOldest = v.head_seq + 1;
  await loadOlderAudit();
}

/** Loads the page of entries just before the oldest one shown (newest first on screen). */
async function loadOlderAudit() {
  const form = new FormData($("#audit-filter"));
  const filter = { action: form.get("action").trim(), subject: form.get("subject").trim() };
  const filtered = Boolean(filter.action || filter.subject);
  // Unfiltered, sequence numbers are dense: ask for the AUDIT_PAGE entries before the oldest
  // shown. Filtered, walk from the start (the API pages forward).
  const after = filtered ? 0 : Math.max(0, auditOldest - 1 - AUDIT_PAGE);
  const limit = filtered ? 1000 : Math.min(AUDIT_PAGE, Math.max(auditOldest - 1, 1));
  const page = await api("GET", `/admin/audit${query({ after, limit, ...filter })}`);
  const body = $("#audit-table tbody");
  for (const entry of page.entries.filter((x) => x.seq < auditOldest).reverse()) {
    body.append(el("tr", {},
      el("td", { class: "num", text: String(entry.seq) }),
      el("td", { text: when(entry.at) }),
      el("td", { text: entry.actor }),
      el("td", { text: entry.action }),
      el("td", { text: entry.subject || "" }),
      el("td", { class: "hash", text: entry.request_id ? `…${entry.request_id.slice(-12)}` : "", title: entry.request_id || undefined }),
      el("td", { class: "details", text: JSON.stringify(entry.details) }),
      el("td", { class: "hash", text: entry.hash.slice(0, 12), title: entry.hash }),
    ));
  }
  const oldest = page.entries.length ? page.entries[0].seq : 1;
  auditOldest = filtered ? 1 : oldest;
  $("#audit-older").hidden = filtered || oldest <= 1;
}

// ---- report ----

let reportRange = {};

async function loadReport() {
  const form = new FormData($("#report-filter"));
  reportRange = { from: dayStart(form.get("from")), to: dayAfter(form.get("to")) };
  const r = await api("GET", `/admin/reports/erasures${query(reportRange)}`);
  const t = r.time_to_complete;
  const figures = [
    ["Requests", r.requests],
    ["Completed", r.by_status.completed || 0],
    ["In progress", (r.by_status.pending || 0) + (r.by_status.keys_destroyed || 0) + (r.by_status.awaiting_acknowledgements || 0)],
    ["Refused", r.by_status.refused || 0],
    ["Filed on request", r.requested.requests],
    ["Filed by retention policies", r.retention.requests],
    ["Overdue", r.overdue.length],
    ["Median time to complete", duration(t.median_secs)],
    ["95th percentile", duration(t.p95_secs)],
    ["Slowest", duration(t.max_secs)],
    ["Keys destroyed", r.keys_destroyed],
    ["Subject keys destroyed", r.subject_keys_destroyed],
    ["Holds active", r.holds_active],
    ["Unacknowledged tombstones", r.unacknowledged.length],
  ];
  $("#report-summary").replaceChildren(...figures.map(([k, v]) =>
    el("div", { "data-figure": k }, el("dt", { text: k }), el("dd", { text: String(v) }))));

  barChart($("#chart-requests"), $("#chart-requests-desc"), r.weekly, (w) => w.requests, (w) => w.completed,
    (w) => `${w.week}: ${w.requests} requested, ${w.completed} completed`, (v) => String(v));
  barChart($("#chart-times"), $("#chart-times-desc"), r.weekly, (w) => w.median_secs_to_complete || 0, null,
    (w) => `${w.week}: median ${duration(w.median_secs_to_complete)}`, duration);

  const policies = r.retention_policies.map((p) => el("tr", { "data-policy": p.name },
    el("td", { text: p.name }), el("td", { class: "num", text: String(p.requests) }),
    el("td", { text: when(p.next_due) })));
  if (!policies.length) policies.push(el("tr", {}, el("td", { colspan: "3", class: "muted", text: "No retention policies." })));
  $("#report-retention tbody").replaceChildren(...policies);

  const overdue = r.overdue.map((o) => el("tr", {},
    el("td", { class: "hash", text: o.request_id }), el("td", { text: o.subject || "—" }),
    el("td", {}, statusBadge(o.status)), el("td", { text: when(o.requested_at) }),
    el("td", { class: "overdue", text: when(o.deadline) })));
  if (!overdue.length) overdue.push(el("tr", {}, el("td", { colspan: "5", class: "muted", text: "None." })));
  $("#report-overdue tbody").replaceChildren(...overdue);
  const waiting = r.unacknowledged.map((w) => el("tr", {},
    el("td", { text: w.consumer }), el("td", { class: "hash", text: w.request_id }),
    el("td", { text: when(w.waiting_since) }), el("td", { text: duration(w.waiting_secs) })));
  if (!waiting.length) waiting.push(el("tr", {}, el("td", { colspan: "4", class: "muted", text: "None." })));
  $("#report-unacknowledged tbody").replaceChildren(...waiting);
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * A small bar chart of `weeks` (at most the last 26): `total(w)` as the bar, `part(w)` (if
 * given) filled inside it. The description paragraph lists every bar for screen readers.
 */
function barChart(chart, description, weeks, total, part, describe, label) {
  const shown = weeks.slice(-26);
  chart.replaceChildren();
  const width = 640, height = 180, left = 44, bottom = 24, top = 10;
  if (!shown.length) {
    chart.append(svg("text", { x: left, y: height / 2 }, "No requests in this period."));
    description.textContent = "No requests in this period.";
    return;
  }
  const max = Math.max(...shown.map(total), 1);
  const slot = (width - left) / shown.length;
  const barWidth = Math.max(Math.min(slot * 0.7, 48), 2);
  const y = (v) => height - bottom - (v / max) * (height - bottom - top);
  chart.append(svg("line", { class: "axis", x1: left, x2: width, y1: height - bottom, y2: height - bottom }));
  chart.append(svg("text", { x: 2, y: top + 8 }, label(max)));
  chart.append(svg("text", { x: 2, y: height - bottom }, label(0)));
  shown.forEach((w, i) => {
    const x = left + i * slot + (slot - barWidth) / 2;
    const bar = svg("rect", { class: part ? "bar" : "bar time", x, y: y(total(w)), width: barWidth, height: height - bottom - y(total(w)) });
    bar.append(svg("title", {}, describe(w)));
    chart.append(bar);
    if (part) {
      chart.append(svg("rect", { class: "bar done", x, y: y(part(w)), width: barWidth, height: height - bottom - y(part(w)) }));
    }
    if (shown.length <= 13 || i % 2 === 0) {
      chart.append(svg("text", { x: x, y: height - 8 }, w.week.slice(5)));
    }
  });
  description.textContent = shown.map(describe).join("; ");
}

async function downloadCsv() {
  const csv = await api("GET", `/admin/reports/erasures${query({ ...reportRange, format: "csv" })}`);
  const link = el("a", {
    href: URL.createObjectURL(new Blob([csv], { type: "text/csv" })),
    download: "lethe-erasure-report.csv",
  });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// ---- wiring ----

document.addEventListener("DOMContentLoaded", () => {
  const on = (selector, event, handler) => $(selector).addEventListener(event, handler);
  on("#sign-in-form", "submit", (event) => {
    event.preventDefault();
    signIn($("#token").value.trim());
  });
  on("#sign-out", "click", () => signOut());
  for (const button of document.querySelectorAll(".tabs button")) {
    button.addEventListener("click", () => showTab(button.dataset.tab));
  }
  on("#erasure-filter", "submit", busy($("#erasure-filter"), () => loadErasures()));
  on("#forget-form", "submit", busy($("#forget-form"), fileForget));
  on("#subject-lookup", "submit", busy($("#subject-lookup"), (form) => lookUpSubject(form.get("subject").trim())));
  on("#hold-form", "submit", busy($("#hold-form"), placeHold));
  on("#lift-hold", "click", () => liftHold().catch(fail));
  on("#retention-form", "submit", busy($("#retention-form"), savePolicy));
  on("#retention-sweep", "click", () => sweepRetention().catch(fail));
  on("#audit-filter", "submit", busy($("#audit-filter"), () => loadAudit()));
  on("#audit-reverify", "click", () => verifyAudit().catch(fail));
  on("#audit-older", "click", () => loadOlderAudit().catch(fail));
  on("#report-filter", "submit", busy($("#report-filter"), () => loadReport()));
  on("#report-csv", "click", () => downloadCsv().catch(fail));
  if (token()) showApp();
  else $("#token").focus();
});
