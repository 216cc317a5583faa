// The fieldsync console: a small client of the local HTTP API (docs/API.md). The session
// cookie authenticates every request; writes add the X-Fieldsync-Console header.
"use strict";

const page = () => document.getElementById("page");
// Replaces the page's content; arrays are flattened, null and undefined skipped.
function render(...kids) {
  page().replaceChildren(...kids.flat(2).filter((k) => k !== null && k !== undefined));
}
let stream = null; // the Live page's EventSource
let names = {}; // instance id -> display name (this laptop and its peers)
let me = null;

// h("td", {class: "x"}, "text", child): builds an element; strings become text, never HTML.
function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat(Infinity)) {
    if (k === null || k === undefined) continue;
    e.append(typeof k === "string" || typeof k === "number" ? String(k) : k);
  }
  return e;
}

async function api(path, opts) {
  const o = Object.assign({ headers: {} }, opts || {});
  if (o.body !== undefined) {
    o.headers["Content-Type"] = "application/json";
    o.headers["X-Fieldsync-Console"] = "1";
    o.body = JSON.stringify(o.body);
  }
  const r = await fetch(path, o);
  const text = await r.text();
  let v = null;
  try { v = text ? JSON.parse(text) : null; } catch (_) { v = null; }
  if (!r.ok) {
    if (r.status === 401) throw new Error("Your console session ended: run `fieldsync console` for a new link.");
    throw new Error((v && v.message) || ("request failed with status " + r.status));
  }
  return v;
}

function showError(msg) {
  const e = document.getElementById("error");
  e.textContent = msg || "";
  e.hidden = !msg;
}

function nameOf(id) {
  if (!id) return "this laptop";
  if (me && id === me.instance) return (me.name || "this laptop") + " (this laptop)";
  return names[id] || id;
}

// "2026-12-05 00:48" in local time, as the CLI writes it (not the browser's locale format).
function localTime(t) {
  if (!t) return "never";
  const d = new Date(t);
  if (isNaN(d.getTime())) return String(t);
  const two = (n) => String(n).padStart(2, "0");
  return d.getFullYear() + "-" + two(d.getMonth() + 1) + "-" + two(d.getDate()) + " " +
    two(d.getHours()) + ":" + two(d.getMinutes());
}

function ago(t) {
  if (!t) return "";
  const s = Math.max(0, Math.round((Date.now() - new Date(t).getTime()) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " days ago";
}

function bytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KB";
  return (n / 1048576).toFixed(1) + " MB";
}

function secs(s) {
  if (s === null || s === undefined) return "unknown";
  s = Math.round(s);
  if (s < 60) return s + " s";
  return Math.floor(s / 60) + " min " + (s % 60) + " s";
}

// Stamps look like 2026-11-24T14:00:00.123Z#0003@<instance>.
function stampTime(at) {
  return at ? localTime(String(at).split("#")[0]) : "";
}

// A value as text for people: strings without quotes, numbers as written, "(empty)" for an
// empty or removed value; only objects and arrays stay JSON.
function show(v) {
  if (v === undefined) return "(no value)";
  if (v === null || v === "") return "(empty)";
  if (typeof v === "string") return v;
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  return JSON.stringify(v);
}

// A record's fields as "key: value" lines, the `edited` ones first and marked.
function fieldLines(fields, edited) {
  const ed = edited || [];
  const keys = Object.keys(fields || {});
  const order = keys.filter((k) => ed.includes(k)).concat(keys.filter((k) => !ed.includes(k)));
  return h("ul", { class: "fields" }, order.map((k) => h("li", { class: ed.includes(k) ? "edited" : null },
    h("span", { class: "key" }, k + ": "), show(fields[k]), ed.includes(k) ? h("strong", { class: "mark" }, " (edited)") : null)));
}

async function loadMe() {
  const o = await api("/v1/overview");
  me = o;
  names = {};
  for (const p of o.peers) names[p.instance] = p.name;
  document.getElementById("me").textContent =
    (o.name || "this laptop") + (o.owner ? " · " + o.owner : "") + (o.deployment ? " · " + o.deployment : "");
  return o;
}

// ---- Overview ---------------------------------------------------------------------------

async function overview() {
  const o = await loadMe();
  const sent = (p) => {
    if (p.revoked) return h("span", { class: "muted" }, "no: revoked, it receives nothing more");
    if (p.pending === null) return h("span", { class: "muted" }, "not known until the next sync");
    if (p.pending === 0) return h("span", { class: "ok" }, "yes, everything");
    return h("span", { class: "bad" }, p.pending + " change" + (p.pending === 1 ? "" : "s") + " not yet received");
  };
  const rows = o.peers.map((p) =>
    h("tr", { "data-peer": p.name },
      h("th", { scope: "row" }, p.name),
      h("td", {}, p.owner || ""),
      h("td", {}, p.online ? h("span", { class: "ok" }, "online") : h("span", { class: "muted" }, "offline")),
      h("td", {}, p.last_sync ? localTime(p.last_sync) + " (" + ago(p.last_sync) + ")" : "never"),
      h("td", {}, sent(p)),
      h("td", {}, p.problem ? h("span", { class: "bad" }, p.problem) : "none")));
  render(
    h("h1", {}, "Overview"),
    h("dl", { class: "facts" },
      h("dt", {}, "This laptop"), h("dd", {}, o.name || o.instance),
      h("dt", {}, "Owner"), h("dd", {}, o.owner || "not set"),
      h("dt", {}, "Deployment"), h("dd", {}, o.deployment || "not joined: sync is off"),
      h("dt", {}, "Unresolved conflicts"), h("dd", {}, String(o.unresolved_conflicts))),
    h("h2", {}, "Peers"),
    o.peers.length === 0
      ? h("p", {}, "No peer has synced with this laptop yet.")
      : h("table", { id: "peers" },
        h("thead", {}, h("tr", {}, ["Laptop", "Owner", "State", "Last sync", "Everything sent?", "Problem"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, rows)));
}

// ---- Live sessions ----------------------------------------------------------------------

// Percent done, never 100 before the end (a relaying peer's feed grows while it sends).
function percent(fraction, done) {
  return done ? 100 : Math.min(99, Math.floor((fraction || 0) * 100));
}

// All the positions the sender had at the start are through but its last page is not: it
// receives more while it sends (a relay), so the session's share done says nothing.
function outrun(d) {
  return !d.done && d.to > d.from && d.at >= d.to;
}

function direction(label, d) {
  const pct = percent(d.fraction, d.done);
  // The estimate covers the positions the sender had when the direction began: once they are
  // through (or before the direction began) and it is not done, more is arriving: unknown.
  const known = d.done || d.to > d.at;
  const bytesKnown = d.done || (known && d.at > d.from);
  // A finished direction that moved no record: one line, not "0 of about 0 records … 100%".
  if (d.done && !d.records) {
    return h("div", { class: "dir" }, h("p", {}, h("strong", {}, label + ": "), "no records (" + bytes(d.bytes) + " of messages)"));
  }
  return h("div", { class: "dir" },
    h("p", {}, h("strong", {}, label + ": "),
      d.records + " of about " + (known ? d.records_expected : "unknown") + " records, " +
      bytes(d.bytes) + " of about " + (bytesKnown ? bytes(d.bytes_expected) : "unknown") +
      ", " + Math.round(d.rate) + " records/s, time left " + (d.done ? "none" : known ? secs(d.eta_secs) : "unknown")),
    // Without an estimate the bar runs without a value (the browser's "in progress" bar).
    known ? h("progress", { max: "100", value: String(pct), "aria-label": label + " " + pct + "%" })
      : h("progress", { max: "100", "aria-label": label + ": how much is left is unknown" }),
    h("span", { class: "pct" }, known ? pct + "%" : "how much is left is unknown"));
}

// ": 3 with laptopA (started by this laptop and laptopA, the last at 2026-12-05 00:48), 1 with
// laptopC (…)": by peer, newest first, who started them.
function idleSummary(list) {
  const by = new Map();
  for (const x of list) {
    const peer = x.peer_name || x.addr;
    const g = by.get(peer) || { n: 0, who: [], last: x.started };
    const who = x.role === "responder" ? peer : "this laptop";
    g.n += 1;
    if (!g.who.includes(who)) g.who.push(who);
    by.set(peer, g);
  }
  return ": " + [...by].map(([peer, g]) => g.n + " with " + peer + " (started by " + g.who.join(" and ") +
    (g.n > 1 ? ", the last at " : " at ") + localTime(g.last) + ")").join(", ");
}

function renderSessions(s) {
  const card = (x) => h("div", { class: "card session", "data-peer": x.peer_name || x.addr, "data-state": x.state },
    h("h2", {}, (x.peer_name || x.addr) + " — " +
      (x.state === "running" ? (outrun(x.received) || outrun(x.sent) ? "syncing, how much is left is unknown"
        : "syncing, " + percent(x.fraction, false) + "% done") :
        x.state === "finished" ? "finished, 100% done" : "failed")),
    x.error ? h("p", { class: "bad" }, x.error) : null,
    h("p", { class: "muted" }, "Started by " + (x.role === "responder" ? (x.peer_name || x.addr) : "this laptop") +
      " at " + localTime(x.started) + ", " + secs(x.elapsed_secs) + (x.conflicts ? ", " + x.conflicts + " conflicts" : "")),
    direction("Received", x.received),
    direction("Sent", x.sent));
  // Sessions that found nothing to move (most of them, between laptops in step) are one line.
  const empty = (x) => x.state === "finished" && !x.conflicts && !x.received.records && !x.sent.records;
  const moved = s.finished.filter((x) => !empty(x));
  const idle = s.finished.length - moved.length;
  render(
    h("h1", {}, "Live sessions"),
    h("h2", {}, "In progress"),
    s.running.length ? s.running.map(card) : h("p", { id: "idle" }, "No sync is running right now."),
    h("h2", {}, "Recently finished"),
    moved.map(card),
    idle ? h("p", { id: "nothing-moved", class: "muted" }, idle + (idle === 1 ? " session" : " sessions") + " with nothing to move" +
      idleSummary(s.finished.filter(empty)) + ".") : null,
    s.finished.length ? null : h("p", {}, "None since the agent started."));
}

async function live() {
  await loadMe();
  renderSessions(await api("/v1/sessions"));
  stream = new EventSource("/v1/sessions?feed=sse");
  stream.addEventListener("sessions", (e) => renderSessions(JSON.parse(e.data)));
}

// ---- Conflicts --------------------------------------------------------------------------
// Every entry comes told from this laptop's side (GET /v1/conflicts: `sides` by laptop, value
// and time, `in_record`, `why`); each button posts the resolve body its side names (`keep`).

// The page shows PAGE_SIZE entries at a time, of one table or all: a laptop back from the field
// can hold hundreds (a trial had 404 open on one page 188,052 px tall).
const PAGE_SIZE = 25;
let conflictView = { table: "", start: 0 };

async function resolve(id, body) {
  try {
    await api("/v1/conflicts/" + id + "/resolve", { method: "POST", body });
    showError("");
    await conflicts(null, "Conflict " + id + " resolved: the change syncs to the other laptops.");
  } catch (e) { showError(e.message); }
}

// "laptopA (this laptop)" or "laptopA".
function laptopName(l) {
  const n = l.name || l.id;
  return l.this_laptop ? n + " (this laptop)" : n;
}

// What an input shows for a value: plain text for a string (unless that text would read back
// as JSON of another type), else JSON.
function asInput(v) {
  if (typeof v === "string") {
    try { JSON.parse(v); } catch (_) { return v; }
  }
  return JSON.stringify(v === undefined ? null : v);
}

// A form that posts {keep_value: V} (JSON, or plain text taken as a string).
function valueForm(c, label, button, initial, record) {
  // One form per record of a name clash: ids kept apart.
  const id = "value-" + c.id + (record ? "-" + String(record).slice(0, 8) : "");
  const input = h("input", { id, type: "text", value: initial });
  return h("form", { class: "inline", onsubmit: (e) => {
    e.preventDefault();
    let v;
    try { v = JSON.parse(input.value); } catch (_) { v = input.value; }
    const body = { keep_value: v };
    if (record) body.record = record;
    resolve(c.id, body);
  } },
  h("label", { for: id }, label), input,
  h("button", { type: "submit", class: "secondary" }, button));
}

// The record for people: its name (or title) as `fieldsync conflicts` prints it, from the
// entry's `record_name`; the id only when it has none.
function recordTitle(c) {
  return c.record_name ? "“" + c.record_name + "”" : String(c.record).slice(0, 8);
}

// A record of a name clash as a person tells it apart: its name and the start of its id.
function clashRecord(s) {
  const short = String(s.record).slice(0, 8);
  return s.record_name ? "“" + s.record_name + "” (" + short + ")" : short;
}

function conflictCard(c) {
  const title = c.type === "field" ? "field “" + c.field + "” set to different values on two laptops"
    : c.type === "delete_edit" ? "deleted on one laptop, edited on another"
    : "two records share " + c.field + " = " + show(c.value);
  const head = h("h2", {}, "Conflict " + c.id + ": " + c.table + " record " + recordTitle(c) + ", " + title);
  const idLine = h("p", { class: "muted small record-id" }, "Record ",
    h("a", { href: "#record/" + c.table + "/" + c.record }, String(c.record)));
  // By the side flagged in the record: on a third laptop both sides are "theirs".
  const holder = c.sides.find((s) => s.in_record && s.laptop.id === c.in_record_by);
  const why = h("p", { class: "why" }, "Detected " + localTime(c.detected_at) + " by " + laptopName(c.detected_by_laptop) + ". ",
    c.in_record === "both" ? "Both records are kept: " + c.why + "."
      : "In the record now: " + (holder ? holder.side + " (" + laptopName(holder.laptop) + ")" : c.in_record) + " — " + c.why + ".");
  const sides = c.sides.map((s) => {
    const what = s.side === "deleted" ? "the record deleted" : s.side === "alive" ? "the record alive with the edit" : "this value";
    let button = null;
    if (s.keep) {
      const label = s.side === "deleted" ? "Keep deleted" : s.side === "alive" ? "Keep alive"
        : "Keep " + laptopName(s.laptop) + "'s value of " + localTime(s.at);
      button = h("button", { type: "button", class: "keep-" + s.side, onclick: () => resolve(c.id, s.keep),
        "aria-label": label + " (" + laptopName(s.laptop) + ", " + localTime(s.at) + ") for conflict " + c.id }, label);
    }
    const value = s.side === "deleted" ? h("p", { class: "value" }, "(deleted)")
      : s.side === "alive" && s.value && typeof s.value === "object" && !Array.isArray(s.value) ? fieldLines(s.value, s.edited)
      : h("p", { class: "value" }, show(s.value));
    return h("div", { class: "side side-" + s.side + (s.in_record && c.type !== "name_clash" ? " now" : "") },
      h("h3", {}, s.side === "deleted" ? "Deleted on " + laptopName(s.laptop)
        : s.side === "alive" ? "Edited on " + laptopName(s.laptop)
        : (c.type === "name_clash" ? "Record " + clashRecord(s) + ", written by " : "Written by ") + laptopName(s.laptop)),
      h("p", { class: "muted" }, (s.side === "deleted" ? "deleted " : "written ") + localTime(s.at)),
      value,
      s.in_record && c.type !== "name_clash" ? h("p", { class: "ok" }, "This is in the record now (" + what + ")") : null,
      button);
  });
  let extra = null;
  if (c.type === "field") {
    const now = c.sides.find((s) => s.in_record);
    extra = valueForm(c, "Or keep another value (JSON, or plain text):", "Keep this value",
      asInput(now ? now.value : null), null);
  } else if (c.type === "name_clash") {
    // Either record may be the one to rename (the gate's, or the registry's): a form for each,
    // each named (trial 10: only this laptop's was offered, by its UUID).
    extra = c.sides.filter((s) => s.record).map((s) =>
      valueForm(c, "Rename record " + clashRecord(s) + (s.laptop.this_laptop ? " (written on this laptop)" : "") + " to:",
        "Rename", asInput(c.value), s.record));
  }
  return h("div", { class: "card conflict conflict-" + c.type, "data-conflict": String(c.id) }, head, idLine, why,
    h("div", { class: "sides" }, sides), extra);
}

// #conflicts/TABLE/START: the entries of TABLE (empty: every table) from START.
async function conflicts(args, notice) {
  if (args) conflictView = { table: args[0] || "", start: Math.max(0, parseInt(args[1] || "0", 10) || 0) };
  await loadMe();
  const all = await api("/v1/conflicts");
  const counts = {};
  for (const c of all) counts[c.table] = (counts[c.table] || 0) + 1;
  const table = conflictView.table && counts[conflictView.table] ? conflictView.table : "";
  const list = table ? all.filter((c) => c.table === table) : all;
  let start = conflictView.start;
  if (start >= list.length) start = Math.max(0, (Math.ceil(list.length / PAGE_SIZE) - 1) * PAGE_SIZE);
  const shown = list.slice(start, start + PAGE_SIZE);
  const go = (t, from) => { location.hash = "#conflicts/" + encodeURIComponent(t) + "/" + from; };
  const sel = h("select", { id: "conflict-table", onchange: () => go(sel.value, 0) },
    h("option", { value: "", selected: !table }, "all tables (" + all.length + ")"),
    Object.keys(counts).sort().map((t) => h("option", { value: t, selected: t === table }, t + " (" + counts[t] + ")")));
  const pager = () => h("p", { class: "pager" },
    h("span", { class: "count" }, list.length ? (start + 1) + "–" + (start + shown.length) + " of " + list.length : ""), " ",
    start > 0 ? h("button", { type: "button", class: "secondary prev", onclick: () => go(table, Math.max(0, start - PAGE_SIZE)) }, "Previous") : null, " ",
    start + PAGE_SIZE < list.length ? h("button", { type: "button", class: "next", onclick: () => go(table, start + PAGE_SIZE) }, "Next") : null);
  render(
    h("h1", {}, "Conflicts"),
    notice ? h("p", { class: "ok", role: "status" }, notice) : null,
    all.length ? h("form", { class: "inline", onsubmit: (e) => e.preventDefault() },
      h("label", { for: "conflict-table" }, "Table"), sel) : null,
    list.length ? [pager(), shown.map(conflictCard), list.length > PAGE_SIZE ? pager() : null]
      : h("p", { id: "no-conflicts" }, "No unresolved conflicts."));
}

// ---- Records ----------------------------------------------------------------------------

async function records(args) {
  await loadMe();
  const [table, after, field, value] = args;
  const tables = await api("/v1/tables");
  // A table chosen is shown at once (it waited for "Show", trial 10).
  const sel = h("select", { id: "table", onchange: () => go("") }, tables.map((t) =>
    h("option", { value: t.table || t.name, selected: (t.table || t.name) === table }, (t.table || t.name) + " (" + t.live + ")")));
  const f = h("input", { id: "field", type: "text", value: field || "", placeholder: "e.g. name" });
  const v = h("input", { id: "value", type: "text", value: value || "", placeholder: "e.g. Amina Okafor" });
  const go = (a) => {
    location.hash = "#records/" + [sel.value, a || "", f.value, v.value].map(encodeURIComponent).join("/");
  };
  const form = h("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); go(""); } },
    h("label", { for: "table" }, "Table"), sel,
    h("label", { for: "field" }, "Field"), f,
    h("label", { for: "value" }, "contains"), v,
    h("button", { type: "submit" }, "Show"));
  const parts = [h("h1", {}, "Records"), form];
  const t = table || (tables[0] && (tables[0].table || tables[0].name));
  if (t) {
    let q = "?limit=50" + (after ? "&after=" + encodeURIComponent(after) : "");
    // Any letter case, any part: "amina" finds "Amina Okafor" (GET …/records?contains.NAME=).
    // Text typed without a field is looked for in the name (it showed every record).
    const inField = field || (value ? "name" : "");
    if (inField) q += "&contains." + encodeURIComponent(inField) + "=" + encodeURIComponent(value || "");
    const p = await api("/v1/tables/" + t + "/records" + q);
    // As `fieldsync list` (cli/human.rs `columns_kept`): at most six columns, name and title
    // first, then the fields most records have, shorter values first; shown name and title
    // first, the others by name. The rest are named under the table (the first six by name
    // left out `status` of a registry, trial 10).
    const stat = {};
    for (const r of p.records) for (const [k, val] of Object.entries(r.fields)) {
      const s = stat[k] || (stat[k] = { n: 0, len: 0 });
      s.n++; s.len += show(val).length;
    }
    const named = (c) => c === "name" || c === "title";
    const byName = (x, y) => (x < y ? -1 : x > y ? 1 : 0);
    const avg = (c) => Math.floor(stat[c].len / stat[c].n);
    const ranked = Object.keys(stat).sort((x, y) =>
      (named(y) - named(x)) || (stat[y].n - stat[x].n) || (avg(x) - avg(y)) || byName(x, y));
    const cols = ranked.slice(0, 6).sort((x, y) => (named(y) - named(x)) || byName(x, y));
    const hidden = ranked.slice(6).sort(byName);
    // A whole result on one page is read by its first column (the name), as the CLI lists a
    // table it shows whole; pages of a longer one stay in id order so paging stays stable.
    if (!p.next && !after && cols.length && (cols[0] === "name" || cols[0] === "title")) {
      const key = (r) => { const v = r.fields[cols[0]]; return v === undefined || v === null ? "" : show(v).toLowerCase(); };
      p.records.sort((x, y) => (key(x) === "") - (key(y) === "") || key(x).localeCompare(key(y)) || x.id.localeCompare(y.id));
    }
    parts.push(h("table", { id: "records" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Record"), cols.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, p.records.map((r) => h("tr", {},
        h("td", {}, h("a", { href: "#record/" + t + "/" + r.id }, r.id.slice(0, 8))),
        cols.map((c) => h("td", {}, r.fields[c] === undefined ? "" : show(r.fields[c]))))))));
    if (hidden.length) parts.push(h("p", { class: "muted small", id: "hidden-fields" },
      hidden.length + (hidden.length === 1 ? " field" : " fields") + " not shown: " + hidden.join(", ") +
      " (open a record to see all its fields)."));
    if (!field && value) parts.push(h("p", { class: "muted small" }, "Searched in the field “name”; type another field to search in it."));
    if (!p.records.length) parts.push(h("p", {}, "No records match."));
    parts.push(h("p", {},
      after ? h("button", { type: "button", class: "secondary", onclick: () => go("") }, "First page") : null, " ",
      p.next ? h("button", { type: "button", onclick: () => go(p.next) }, "Next page") : null));
  } else {
    parts.push(h("p", {}, "No tables yet."));
  }
  render(...parts);
}

async function record(args) {
  await loadMe();
  const [table, id] = args;
  const r = await api("/v1/tables/" + table + "/records/" + id + "?include_deleted=true");
  const hist = await api("/v1/tables/" + table + "/records/" + id + "/history");
  // Its open conflicts, each linked on the Conflicts page (filtered to the table, at its page).
  const open = (await api("/v1/conflicts?table=" + encodeURIComponent(table)));
  const mine = [];
  open.forEach((c, i) => { if (c.record === r.id) mine.push([c, Math.floor(i / PAGE_SIZE) * PAGE_SIZE]); });
  const changes = (c) => (c || []).map((x) =>
    h("li", {}, h("strong", {}, x.field + ": "), x.old === undefined || x.old === null ? "" : show(x.old) + " → ", x.new === undefined || x.new === null ? "(removed)" : show(x.new)));
  const named = r.record_name; // the name `fieldsync conflicts` gives it (absent: none)
  render(
    h("h1", {}, table + " record " + (named ? "“" + named + "”" : id) + (r.deleted ? " (deleted)" : "")),
    named ? h("p", { class: "muted small record-id" }, "Record " + id) : null,
    mine.length ? h("p", { class: "bad", id: "record-conflicts" }, "This record has an open conflict: ",
      mine.map(([c, at], i) => [i ? ", " : "", h("a", { href: "#conflicts/" + encodeURIComponent(table) + "/" + at },
        "conflict " + c.id + (c.type === "field" ? " (field “" + c.field + "”)" : c.type === "delete_edit" ? " (deleted on one laptop, edited on another)" : " (name clash)"))]),
      ": keep one side on the Conflicts page.") : null,
    h("dl", { class: "facts" }, Object.entries(r.fields).map(([k, v]) => [h("dt", {}, k), h("dd", { class: "value" }, show(v))])),
    h("h2", {}, "History, oldest first"),
    h("table", { id: "history" },
      h("thead", {}, h("tr", {}, ["When", "Laptop", "What", "Changes"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, hist.map((e) => h("tr", {},
        h("td", {}, localTime(e.time)), h("td", {}, nameOf(e.instance)), h("td", {}, e.kind),
        h("td", {}, h("ul", {}, changes(e.changes))))))),
    h("p", {}, h("a", { href: "#records/" + table }, "Back to " + table)));
}

// ---- Held & warnings --------------------------------------------------------------------

async function warnings() {
  await loadMe();
  const w = await api("/v1/warnings");
  const d = w.discovery;
  render(
    h("h1", {}, "Held & warnings"),
    h("h2", {}, "Clocks"),
    w.clocks.length ? h("ul", {}, w.clocks.map((c) => h("li", { class: "bad" }, c.message)))
      : h("p", { class: "ok" }, "Every peer's clock is within a minute of this laptop's."),
    h("h2", {}, "Failing peers"),
    w.failing.length ? h("ul", {}, w.failing.map((f) => h("li", {}, f.name + ": " + f.error + " (last tried " + localTime(f.last_attempt) + ")")))
      : h("p", { class: "ok" }, "No peer is failing."),
    h("h2", {}, "Discovery"),
    !d ? h("p", {}, "Discovery is off (static peers only).")
      : h("p", {}, d.diagnosis || ("Working: " + d.peers_heard + " peer adverts heard on " + (d.interfaces || []).join(", ") + ".")),
    h("h2", {}, "Held by safety brakes"),
    w.held.length ? h("ul", {}, w.held.map((x) => h("li", { class: "bad" }, x.message + " (held " + localTime(x.at) + "; decide with `fieldsync held approve " + x.id + "` or `fieldsync held reject " + x.id + "`)")))
      : h("p", { class: "ok" }, "Nothing held: no peer asked to delete a large part of a table."));
}

// ---- Router -----------------------------------------------------------------------------

const pages = { overview, live, conflicts, records, record, warnings };

async function route() {
  if (stream) { stream.close(); stream = null; }
  const [name, ...args] = (location.hash.slice(1) || "overview").split("/").map(decodeURIComponent);
  const nav = name === "record" ? "records" : name;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.id === "nav-" + nav) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  showError("");
  try {
    await (pages[name] || overview)(args);
  } catch (e) {
    showError(e.message);
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);
// The overview's "3 min ago" and online states go stale: refresh it every 10 s.
setInterval(() => { if ((location.hash || "#overview") === "#overview") route(); }, 10000);
