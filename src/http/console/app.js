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

function localTime(t) {
  if (!t) return "never";
  const d = new Date(t);
  return d.toLocaleString();
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

function show(v) {
  return v === undefined ? "(no value)" : JSON.stringify(v, null, 1);
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

function direction(label, d) {
  const pct = Math.floor((d.fraction || 0) * 100);
  return h("div", { class: "dir" },
    h("p", {}, h("strong", {}, label + ": "),
      d.records + " of about " + d.records_expected + " records, " + bytes(d.bytes) + " of about " + bytes(d.bytes_expected) +
      ", " + Math.round(d.rate) + " records/s, time left " + (d.done ? "none" : secs(d.eta_secs))),
    h("progress", { max: "100", value: String(pct), "aria-label": label + " " + pct + "%" }),
    h("span", { class: "pct" }, pct + "%"));
}

function renderSessions(s) {
  const card = (x) => h("div", { class: "card session", "data-peer": x.peer_name || x.addr, "data-state": x.state },
    h("h2", {}, (x.peer_name || x.addr) + " — " +
      (x.state === "running" ? "syncing, " + Math.floor(x.fraction * 100) + "% done" :
        x.state === "finished" ? "finished, 100% done" : "failed")),
    x.error ? h("p", { class: "bad" }, x.error) : null,
    h("p", { class: "muted" }, "Started by " + (x.role === "responder" ? (x.peer_name || x.addr) : "this laptop") +
      " at " + localTime(x.started) + ", " + secs(x.elapsed_secs) + (x.conflicts ? ", " + x.conflicts + " conflicts" : "")),
    direction("Received", x.received),
    direction("Sent", x.sent));
  render(
    h("h1", {}, "Live sessions"),
    h("h2", {}, "In progress"),
    s.running.length ? s.running.map(card) : h("p", { id: "idle" }, "No sync is running right now."),
    h("h2", {}, "Recently finished"),
    s.finished.length ? s.finished.map(card) : h("p", {}, "None since the agent started."));
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

async function resolve(id, body) {
  try {
    await api("/v1/conflicts/" + id + "/resolve", { method: "POST", body });
    showError("");
    await conflicts("Conflict " + id + " resolved: the change syncs to the other laptops.");
  } catch (e) { showError(e.message); }
}

// "laptopA (this laptop)" or "laptopA".
function laptopName(l) {
  const n = l.name || l.id;
  return l.this_laptop ? n + " (this laptop)" : n;
}

// A form that posts {keep_value: V} (JSON, or plain text taken as a string).
function valueForm(c, label, button, initial, record) {
  const input = h("input", { id: "value-" + c.id, type: "text", value: initial });
  return h("form", { class: "inline", onsubmit: (e) => {
    e.preventDefault();
    let v;
    try { v = JSON.parse(input.value); } catch (_) { v = input.value; }
    const body = { keep_value: v };
    if (record) body.record = record;
    resolve(c.id, body);
  } },
  h("label", { for: "value-" + c.id }, label), input,
  h("button", { type: "submit", class: "secondary" }, button));
}

async function conflicts(notice) {
  await loadMe();
  const list = await api("/v1/conflicts");
  const cards = [];
  for (const c of list) {
    const title = c.type === "field" ? "field “" + c.field + "” set to different values on two laptops"
      : c.type === "delete_edit" ? "deleted on one laptop, edited on another"
      : "two records share " + c.field + " = " + show(c.value);
    const head = h("h2", {}, "Conflict " + c.id + ": " + c.table + " record " + c.record + ", " + title);
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
      return h("div", { class: "side side-" + s.side + (s.in_record && c.type !== "name_clash" ? " now" : "") },
        h("h3", {}, s.side === "deleted" ? "Deleted on " + laptopName(s.laptop)
          : s.side === "alive" ? "Edited on " + laptopName(s.laptop)
          : (c.type === "name_clash" ? "Record " + s.record + ", written by " : "Written by ") + laptopName(s.laptop)),
        h("p", { class: "muted" }, (s.side === "deleted" ? "deleted " : "written ") + localTime(s.at)),
        h("p", { class: "value" }, s.side === "deleted" ? "(deleted)" : show(s.value)),
        s.in_record && c.type !== "name_clash" ? h("p", { class: "ok" }, "This is in the record now (" + what + ")") : null,
        button);
    });
    let extra = null;
    if (c.type === "field") {
      const now = c.sides.find((s) => s.in_record);
      extra = valueForm(c, "Or keep another value (JSON, or plain text):", "Keep this value",
        JSON.stringify(now ? now.value : null), null);
    } else if (c.type === "name_clash") {
      const mine = c.sides.find((s) => s.laptop.this_laptop);
      extra = mine
        ? valueForm(c, "Rename this laptop's record (" + mine.record + ") to:", "Rename", JSON.stringify(c.value), mine.record)
        : h("p", { class: "muted" }, "Neither record was written on this laptop: rename one with `fieldsync conflicts resolve " + c.id + " --keep-value V --record ID`.");
    }
    cards.push(h("div", { class: "card conflict conflict-" + c.type, "data-conflict": String(c.id) }, head, why,
      h("div", { class: "sides" }, sides), extra));
  }
  render(
    h("h1", {}, "Conflicts"),
    notice ? h("p", { class: "ok", role: "status" }, notice) : null,
    cards.length ? cards : h("p", { id: "no-conflicts" }, "No unresolved conflicts."));
}

// ---- Records ----------------------------------------------------------------------------

async function records(args) {
  await loadMe();
  const [table, after, field, value] = args;
  const tables = await api("/v1/tables");
  const sel = h("select", { id: "table" }, tables.map((t) =>
    h("option", { value: t.table || t.name, selected: (t.table || t.name) === table }, (t.table || t.name) + " (" + t.live + ")")));
  const f = h("input", { id: "field", type: "text", value: field || "", placeholder: "e.g. name" });
  const v = h("input", { id: "value", type: "text", value: value || "", placeholder: "e.g. Amina Okafor" });
  const go = (a) => {
    location.hash = "#records/" + [sel.value, a || "", f.value, v.value].map(encodeURIComponent).join("/");
  };
  const form = h("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); go(""); } },
    h("label", { for: "table" }, "Table"), sel,
    h("label", { for: "field" }, "Field"), f,
    h("label", { for: "value" }, "equals"), v,
    h("button", { type: "submit" }, "Show"));
  const parts = [h("h1", {}, "Records"), form];
  const t = table || (tables[0] && (tables[0].table || tables[0].name));
  if (t) {
    let q = "?limit=50" + (after ? "&after=" + encodeURIComponent(after) : "");
    if (field) {
      let val = value;
      try { JSON.parse(value); } catch (_) { val = JSON.stringify(value); }
      q += "&field." + encodeURIComponent(field) + "=" + encodeURIComponent(val);
    }
    const p = await api("/v1/tables/" + t + "/records" + q);
    const cols = [];
    for (const r of p.records) for (const k of Object.keys(r.fields)) if (!cols.includes(k) && cols.length < 6) cols.push(k);
    parts.push(h("table", { id: "records" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Record"), cols.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, p.records.map((r) => h("tr", {},
        h("td", {}, h("a", { href: "#record/" + t + "/" + r.id }, r.id.slice(0, 8))),
        cols.map((c) => h("td", {}, r.fields[c] === undefined ? "" : (typeof r.fields[c] === "string" ? r.fields[c] : JSON.stringify(r.fields[c])))))))));
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
  const changes = (c) => (c || []).map((x) =>
    h("li", {}, h("strong", {}, x.field + ": "), x.old === undefined || x.old === null ? "" : show(x.old) + " → ", x.new === undefined || x.new === null ? "(removed)" : show(x.new)));
  render(
    h("h1", {}, table + " record " + id + (r.deleted ? " (deleted)" : "")),
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
