// The codeswitch console: a small page script over the JSON admin API (/admin/api/…).
// No framework and no build step: DOM built with h() (text is always set as text, never as
// HTML), charts by uPlot (vendored), live updates by EventSource on /admin/api/events.
"use strict";

// API, tz, statsQuery() and the early requests (EARLY) are early.js's, read first
const state = { me: null, csrf: null, page: null, onEvent: null, es: null, charts: [] };
const $ = (sel, root) => (root || document).querySelector(sel);

// -- DOM ---------------------------------------------------------------------------------
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
const fmt = {
  n: (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString()),
  usd: (v) => (v === null || v === undefined ? "–" : "$" + Number(v).toFixed(Number(v) < 1 ? 4 : 2)),
  ms: (v) => (v === null || v === undefined ? "–" : Number(v) < 1000 ? Math.round(v) + " ms" : (v / 1000).toFixed(1) + " s"),
  tok: (v) => { v = Number(v || 0); return v >= 1e6 ? (v / 1e6).toFixed(1) + "M" : v >= 1e3 ? (v / 1e3).toFixed(1) + "k" : String(v); },
  time: (t) => (t ? new Date(t * 1000).toLocaleString() : "–"),
  clock: (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "–"),
  ago: (t) => { if (!t) return "–"; const s = Date.now() / 1000 - t; return s < 60 ? Math.round(s) + " s ago" : s < 3600 ? Math.round(s / 60) + " min ago" : s < 86400 ? Math.round(s / 3600) + " h ago" : Math.round(s / 86400) + " d ago"; },
  pct: (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(1) + "%"),
};
const label = (labels, id) => (id && labels && labels[id]) || id || "–";
const chip = (text, kind) => h("span", { class: "chip " + (kind || "") }, text);
const statusChip = (r) => chip(String(r.status || "–") + (r.ok ? "" : " " + (r.error_class || "")), r.ok ? "ok" : "bad");
function table(cols, rows, rowFn) {
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, cols.map((c) => h("th", { class: c.endsWith("#") ? "num" : "" }, c.replace(/#$/, ""))))),
    h("tbody", {}, rows.length ? rows.map(rowFn) : h("tr", {}, h("td", { colspan: cols.length, class: "muted" }, "nothing yet")))));
}
function stat(labelText, value, id) {
  return h("div", { class: "card stat" }, h("div", { class: "l" }, labelText), h("div", { class: "v", id: id }, value));
}
function toast(msg, bad) {
  const el = h("div", { class: bad ? "bad" : "" }, msg);
  $("#toast").append(el);
  setTimeout(() => el.remove(), bad ? 8000 : 4000);
}

// -- API ---------------------------------------------------------------------------------
class ApiError extends Error { constructor(status, body) { super(body.error || "HTTP " + status); this.status = status; this.body = body; } }
async function api(method, path, body, params, pending) {
  const url = new URL(API + path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v !== "" && v !== null && v !== undefined) url.searchParams.set(k, v);
  const headers = { accept: "application/json" };
  if (method !== "GET") headers["x-csrf-token"] = state.csrf || "";
  if (body !== undefined) headers["content-type"] = "application/json";
  let r;
  try {
    r = await (pending || fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin" }));
  } catch (e) {
    throw new ApiError(0, { error: "the gateway does not answer (restarting?)" });
  }
  const data = r.headers.get("content-type") === "application/json" ? await r.json() : {};
  if (r.status === 401 && path !== "/me" && path !== "/signin") { showSignIn(); }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}
async function act(button, fn, done) {
  if (button) button.disabled = true;
  try { const out = await fn(); if (done) toast(done); return out; }
  catch (e) { toast(e.message, true); return null; }
  finally { if (button) button.disabled = false; }
}
function formErrors(form, e) {
  const out = $(".error", form);
  if (out) out.textContent = e.message;
  const field = /`\$\.(\w+)`/.exec(e.message) || /^(?:provider )?(\w+) /.exec(e.message);
  for (const input of form.querySelectorAll("input,select")) input.removeAttribute("aria-invalid");
  if (field && form.elements[field[1]]) { form.elements[field[1]].setAttribute("aria-invalid", "true"); form.elements[field[1]].focus(); }
}

// -- sign-in, navigation -----------------------------------------------------------------
const PAGES = [
  ["dashboard", "Dashboard", false], ["providers", "Providers", true], ["users", "Users & keys", true],
  ["keys", "My keys", false, true], ["sessions", "Sessions", false], ["requests", "Requests", false],
  ["stats", "Statistics", false], ["alerts", "Alerts", true], ["mcp", "MCP", true], ["skills", "Skills", true], ["audit", "Audit", true],
];
function showSignIn() {
  state.me = null;
  EARLY.clear(); // asked before signing in: refused, stale after it
  if (state.es) { state.es.close(); state.es = null; }
  $("#view").hidden = true; $("#nav").replaceChildren(); $("#signout").hidden = true; $("#me").textContent = "";
  $("#signin").hidden = false;
  setLive(false);
}
// The first page's data and /me were asked for by early.js before this file was read: a
// render takes that answer (fetchOr) or asks itself.
function fetchOr(path, params) {
  const p = EARLY.get(path);
  if (p) { EARLY.delete(path); return api("GET", path, undefined, params, p); }
  return api("GET", path, undefined, params);
}
async function start() {
  try {
    const me = await fetchOr("/me");
    state.me = me; state.csrf = me.csrf;
  } catch (e) {
    if (e.status === 401) { showSignIn(); return; }
    $("#view").replaceChildren(h("p", { class: "error" }, e.message + " — retrying…"));
    setTimeout(start, 2000);
    return;
  }
  $("#signin").hidden = true; $("#view").hidden = false;
  $("#me").textContent = state.me.name + (state.me.role === "admin" ? " (admin)" : "");
  $("#signout").hidden = state.me.mode === "open";
  const admin = state.me.role === "admin";
  $("#nav").replaceChildren(...PAGES.filter(([, , adminOnly, userOnly]) => (admin || !adminOnly) && !(admin && userOnly))
    .map(([id, text]) => h("a", { href: "#/" + id, "data-page": id }, text)));
  connectLive();
  route();
}
async function signIn(ev, body) {
  ev.preventDefault();
  $("#signin-error").textContent = "";
  try {
    const me = await api("POST", "/signin", body);
    state.me = me; state.csrf = me.csrf;
    ev.target.reset();
    start();
  } catch (e) { $("#signin-error").textContent = e.message; }
}
function route() {
  if (!state.me) return;
  const name = (location.hash.replace(/^#\/?/, "").split("/")[0]) || "dashboard";
  const arg = decodeURIComponent(location.hash.split("/").slice(2).join("/"));
  const allowed = [...document.querySelectorAll("#nav a")].map((a) => a.dataset.page);
  const page = allowed.includes(name) ? name : "dashboard";
  for (const a of document.querySelectorAll("#nav a")) a.toggleAttribute("aria-current", a.dataset.page === page) && a.setAttribute("aria-current", "page");
  for (const c of state.charts) c.destroy();
  state.charts = []; state.onEvent = null; state.page = page;
  // each render gets a box of its own: one still running when the person moved on (a refresh
  // after a button, a late answer) writes into a box no longer on the page
  const main = $("#view");
  const gen = (state.gen = (state.gen || 0) + 1);
  const view = h("div", {}, h("p", { class: "muted" }, "loading…"));
  delete main.dataset.ready;
  main.replaceChildren(view);
  const rendering = RENDER[page](view, arg);
  EARLY.clear(); // only the first page's render may use what was asked early
  rendering.then(() => { if (gen === state.gen) { main.dataset.ready = page; performance.mark("cs-ready-" + page); } })
    .catch((e) => { if (e.status !== 401) view.replaceChildren(h("p", { class: "error", role: "alert" }, e.message)); });
}

// -- live --------------------------------------------------------------------------------
// a page's handler of live facts, kept only while that page is the one shown
function on(view, fn) { if (view.isConnected) state.onEvent = fn; }
function setLive(on) { const el = $("#live"); el.textContent = on ? "● live" : "○ reconnecting"; el.classList.toggle("on", on); }
function connectLive() {
  if (state.es) return;
  const es = new EventSource(API + "/events");
  state.es = es;
  es.onopen = () => setLive(true);
  es.onerror = () => { setLive(false); if (es.readyState === EventSource.CLOSED) { state.es = null; setTimeout(() => state.me && connectLive(), 2000); } };
  for (const kind of ["request", "circuit", "alert", "admin"]) {
    es.addEventListener(kind, (m) => { if (state.onEvent) { try { state.onEvent(kind, JSON.parse(m.data)); } catch (e) { console.warn(e); } } });
  }
}

// -- charts ------------------------------------------------------------------------------
function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
function chart(el, title, data, series) {
  const width = Math.max(280, el.clientWidth || 600);
  const axis = { stroke: cssVar("--muted"), grid: { stroke: cssVar("--line") }, ticks: { stroke: cssVar("--line") } };
  const u = new uPlot({
    title, width, height: 220, scales: { x: { time: true } },
    axes: [axis, { ...axis, size: 50 }],
    series: [{}, ...series.map((s, i) => ({ label: s, stroke: [cssVar("--accent"), cssVar("--bad"), cssVar("--ok")][i % 3], width: 2, points: { show: false } }))],
  }, data, el);
  state.charts.push(u);
  return u;
}

// -- pages -------------------------------------------------------------------------------
const RENDER = {};

RENDER.dashboard = async (view) => {
  const d = await fetchOr("/dashboard", { tz_offset_s: tz });
  const admin = state.me.role === "admin";
  const t = d.today && !d.today.error ? d.today : { requests: 0, errors: 0, total_tokens: 0, cost: 0 };
  const minutes = new Map();
  const now = Math.floor(Date.now() / 60000) * 60;
  for (let m = now - 3540; m <= now; m += 60) minutes.set(m, [0, 0]);
  for (const r of Array.isArray(d.minutes) ? d.minutes : []) if (minutes.has(r.t)) minutes.set(r.t, [r.requests, r.errors]);
  const chartBox = h("div", { class: "chart", id: "rate-chart" });
  const recent = h("tbody", { id: "recent" });
  const cards = h("div", { class: "grid" },
    stat("Requests today", fmt.n(t.requests), "today-requests"), stat("Errors today", fmt.n(t.errors), "today-errors"),
    stat("Tokens today", fmt.tok(t.total_tokens), "today-tokens"), stat("Cost today", fmt.usd(t.cost), "today-cost"),
    stat("Last hour", fmt.n([...minutes.values()].reduce((a, v) => a + v[0], 0)), "hour-requests"));
  const sections = [h("h1", {}, admin ? "Dashboard" : "My usage"), cards,
    h("div", { class: "card", style: "margin-top:12px" }, chartBox),
    h("div", { class: "cols" },
      h("div", { class: "card" }, h("h2", {}, "Latest requests (live)"),
        h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, ["time", "model", "provider", "status", "tokens", "duration"].map((c) => h("th", {}, c)))), recent))),
      ...(admin ? [partsCard(d), onlineCard(d), circuitsCard(d), alertsCard(d)] : []))];
  if (d.today && d.today.error) sections.splice(1, 0, h("p", { class: "error" }, d.today.error));
  view.replaceChildren(...sections);
  const recentRow = (e, fresh) => h("tr", { class: fresh ? "new" : "", "data-request": e.request_id }, h("td", {}, fmt.clock(e.ts)), h("td", {}, e.model), h("td", {}, e.provider || "–"),
    h("td", {}, statusChip(e)), h("td", { class: "num" }, fmt.tok(e.total_tokens)), h("td", { class: "num" }, fmt.ms(e.duration_ms)));
  recent.replaceChildren(...(Array.isArray(d.recent) ? d.recent : []).map((e) => recentRow(e, false)));
  const keys = [...minutes.keys()];
  const u = chart(chartBox, "Requests and errors per minute, last hour", [keys, keys.map((k) => minutes.get(k)[0]), keys.map((k) => minutes.get(k)[1])], ["requests", "errors"]);
  let tot = { ...t };
  on(view, (kind, e) => {
    if (kind === "circuit" || kind === "alert") { route(); return; }
    if (kind !== "request") return;
    tot.requests += 1; if (!e.ok) tot.errors += 1; tot.total_tokens += e.total_tokens || 0;
    $("#today-requests", view).textContent = fmt.n(tot.requests);
    $("#today-errors", view).textContent = fmt.n(tot.errors);
    $("#today-tokens", view).textContent = fmt.tok(tot.total_tokens);
    const m = Math.floor(e.ts / 60) * 60;
    if (!minutes.has(m)) { minutes.set(m, [0, 0]); const first = minutes.keys().next().value; minutes.delete(first); }
    const v = minutes.get(m); v[0] += 1; if (!e.ok) v[1] += 1;
    const ks = [...minutes.keys()];
    u.setData([ks, ks.map((k) => minutes.get(k)[0]), ks.map((k) => minutes.get(k)[1])]);
    $("#hour-requests", view).textContent = fmt.n(ks.reduce((a, k) => a + minutes.get(k)[0], 0));
    recent.prepend(recentRow(e, true));
    while (recent.children.length > 15) recent.lastChild.remove();
  });
};
function partsCard(d) {
  const items = [];
  for (const g of Array.isArray(d.gateways) ? d.gateways : []) {
    for (const p of g.parts) items.push(h("li", {}, chip("alive", "ok"), " ", p.part, " ", h("span", { class: "mono muted" }, p.id), " on ", g.device, " · beat ", fmt.ago(p.last_beat)));
  }
  if (d.parts && d.parts.parts) {
    for (const [name, p] of Object.entries(d.parts.parts)) items.push(h("li", {}, chip(p.alive ? "up" : "down", p.alive ? "ok" : "bad"), " ", name, p.restarts ? ` · ${p.restarts} restarts` : ""));
  }
  items.push(h("li", {}, chip(d.today && !d.today.error ? "answering" : "not answering", d.today && !d.today.error ? "ok" : "bad"), " ledger"));
  return h("div", { class: "card", id: "parts" }, h("h2", {}, "Parts alive"), h("ul", { class: "plain" }, items));
}
function onlineCard(d) {
  const o = d.online && !d.online.error ? d.online : { users: [], devices: [] };
  return h("div", { class: "card", id: "online" }, h("h2", {}, "Online (last 5 minutes)"),
    h("p", { class: "muted" }, `${o.users.length} users, ${o.devices.length} devices`),
    h("ul", { class: "plain" }, o.users.map((x) => h("li", {}, label(d.labels, x.user), " · ", fmt.n(x.requests), " requests · ", x.client || "", " · ", fmt.ago(x.last_seen)))));
}
function circuitsCard(d) {
  const open = (Array.isArray(d.circuits) ? d.circuits : []).filter((c) => c.state !== "closed");
  return h("div", { class: "card", id: "circuits" }, h("h2", {}, "Open circuits"),
    open.length ? h("ul", { class: "plain" }, open.map((c) => h("li", {}, chip(c.state, "bad"), " ", c.key))) : h("p", { class: "muted" }, "none: every provider's circuit is closed"));
}
function alertsCard(d) {
  const firing = (Array.isArray(d.alerts) ? d.alerts : []).filter((a) => a.firing);
  return h("div", { class: "card", id: "firing" }, h("h2", {}, "Alerts firing"),
    firing.length ? h("ul", { class: "plain" }, firing.map((a) => h("li", {}, chip(a.severity || "firing", "bad"), " ", a.rule, " since ", fmt.time(a.fired_at)))) : h("p", { class: "muted" }, "none"));
}

RENDER.providers = async (view) => {
  const d = await api("GET", "/providers");
  const circuits = {};
  for (const c of d.circuits) circuits[c.key] = c.state;
  const form = providerForm(null);
  const active = d.active ? Object.entries(d.active).filter(([, v]) => v).map(([k, v]) => `${k} → ${v}`).join(", ") : "";
  view.replaceChildren(h("div", { class: "row" }, h("h1", {}, "Providers"),
      h("span", { class: "muted" }, `unified mode ${d.unified && d.unified.enabled ? "ON (" + d.unified.url + ")" : "off"}`, active ? " · active: " + active : "")),
    table(["name", "dialect", "base URL", "models", "priority#", "weight#", "key", "circuit", "state", ""], d.providers, (p) => h("tr", { "data-provider": p.name },
      h("td", {}, h("strong", {}, p.name)), h("td", {}, p.dialect), h("td", { class: "mono" }, p.base_url), h("td", {}, (p.models || []).join(", ") || "all"),
      h("td", { class: "num" }, p.priority), h("td", { class: "num" }, p.weight), h("td", { class: "mono" }, p.api_key || "–"),
      h("td", {}, chip(circuits[p.name] || "closed", (circuits[p.name] || "closed") === "closed" ? "ok" : "bad")),
      h("td", {}, chip(p.enabled ? "enabled" : "disabled", p.enabled ? "ok" : "warn")),
      h("td", {}, h("div", { class: "actions" },
        h("button", { class: "ghost", type: "button", onclick: (ev) => act(ev.target, () => api("POST", `/providers/${encodeURIComponent(p.name)}/${p.enabled ? "disable" : "enable"}`), `${p.name} ${p.enabled ? "disabled" : "enabled"}`).then(route) }, p.enabled ? "Disable" : "Enable"),
        h("button", { class: "ghost", type: "button", onclick: () => { form.replaceWith(providerForm(p)); $("#provider-form [name=base_url]").focus(); } }, "Edit"),
        h("button", { class: "danger", type: "button", onclick: (ev) => confirm(`Remove provider ${p.name}?`) && act(ev.target, () => api("DELETE", `/providers/${encodeURIComponent(p.name)}`), `${p.name} removed`).then(route) }, "Remove"))))),
    h("h2", { style: "margin-top:16px" }, "Add or edit a provider"), form);
  on(view, (kind, e) => { if (kind === "circuit" || (kind === "admin" && e.action.startsWith("provider."))) route(); });
};
function providerForm(p) {
  const edit = !!p;
  const f = h("form", { class: "card form", id: "provider-form", novalidate: true },
    h("label", {}, "Name", h("input", { name: "name", required: true, pattern: "[A-Za-z0-9_-]{1,64}", value: p ? p.name : "", readonly: edit })),
    h("label", {}, "Dialect", h("select", { name: "dialect" }, ["anthropic", "openai-chat", "openai-responses", "gemini"].map((x) => h("option", { value: x, selected: p && p.dialect === x }, x)))),
    h("label", {}, "Base URL", h("input", { name: "base_url", required: true, type: "url", placeholder: "https://api.anthropic.com", value: p ? p.base_url : "" })),
    h("label", {}, "API key (literal or env:NAME)", h("input", { name: "api_key", type: "password", autocomplete: "off", placeholder: edit ? "unchanged" : "" })),
    h("label", {}, "Models (globs, comma-separated; empty = all)", h("input", { name: "models", value: p ? (p.models || []).join(", ") : "" })),
    h("label", {}, "Priority (lower first)", h("input", { name: "priority", type: "number", value: p ? p.priority : 1 })),
    h("label", {}, "Weight", h("input", { name: "weight", type: "number", min: 0, value: p ? p.weight : 1 })),
    h("div", { class: "actions" }, h("button", { type: "submit" }, edit ? "Save " + p.name : "Add provider"),
      edit ? h("button", { type: "button", class: "ghost", onclick: () => route() }, "Cancel") : null),
    h("p", { class: "error", role: "alert" }));
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = Object.fromEntries(new FormData(f));
    if (!v.name || !/^[A-Za-z0-9_-]{1,64}$/.test(v.name)) return formErrors(f, { message: "name must be 1-64 letters, digits, '_' or '-'" });
    if (!/^https?:\/\//.test(v.base_url)) return formErrors(f, { message: "base_url must start with http:// or https://" });
    const body = { name: v.name, dialect: v.dialect, base_url: v.base_url, models: v.models.split(",").map((s) => s.trim()).filter(Boolean),
      priority: parseInt(v.priority || "1", 10), weight: parseInt(v.weight || "1", 10), enabled: p ? p.enabled : true };
    if (v.api_key) body.api_key = v.api_key; else if (!edit) body.api_key = "";
    try {
      const out = await api(edit ? "PUT" : "POST", edit ? `/providers/${encodeURIComponent(p.name)}` : "/providers", body);
      toast(`provider ${v.name} saved; in effect on ${out.in_effect_on} of ${out.routers} routers`);
      route();
    } catch (e) { formErrors(f, e); }
  });
  return f;
}

// a budget's usage: a bar (red when spent, amber past the soft threshold) and its words
function budgetBar(r) {
  if (!r || !r.budget) return null;
  const pct = Math.max(0, r.used_pct || 0);
  const cls = r.exhausted ? "bad" : (r.soft_pct && pct >= r.soft_pct ? "warn" : "ok");
  const amount = (v) => (r.unit === "usd" ? "$" + Number(v).toFixed(2) : fmt.n(v) + " tokens");
  const resets = r.resets_at_local ? `resets ${r.resets_at_local.replace("T", " ").slice(0, 16)}` : "never resets";
  return h("div", { class: "budget", "data-budget": r.key || r.user },
    h("progress", { class: cls, max: 100, value: Math.min(100, pct), "aria-label": `${r.key ? "key " + r.key : "user " + r.user} budget used` }),
    h("span", { class: "muted" }, ` ${amount(r.spent)} of ${amount(r.limit)} per ${r.period} (${pct.toFixed(1)}%), ${resets}`));
}

RENDER.users = async (view) => {
  const [d, q] = await Promise.all([api("GET", "/users"), api("GET", "/quota").catch(() => ({ quota: [] }))]);
  const usage = {};
  for (const r of q.quota) usage[r.key_id || r.user_id] = r;
  const secretBox = h("div", { id: "secret" });
  const add = h("form", { class: "card form", id: "user-form" },
    h("label", {}, "Name", h("input", { name: "name", required: true })),
    h("label", {}, "Display name", h("input", { name: "display_name" })),
    h("label", {}, "Role", h("select", { name: "role" }, h("option", { value: "user" }, "user"), h("option", { value: "admin" }, "admin"))),
    h("div", {}, h("button", { type: "submit" }, "Create user")), h("p", { class: "error", role: "alert" }));
  add.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = Object.fromEntries(new FormData(add));
    try { await api("POST", "/users", v); toast(`user ${v.name} created`); route(); } catch (e) { formErrors(add, e); }
  });
  const rows = [];
  for (const u of d.users) {
    const path = `/users/${encodeURIComponent(u.id)}`;
    rows.push(h("tr", { "data-user": u.name },
      h("td", {}, h("strong", {}, u.name), u.display_name ? h("div", { class: "muted" }, u.display_name) : null),
      h("td", {}, chip(u.role, u.role === "admin" ? "warn" : "")), h("td", {}, chip(u.enabled ? "enabled" : "disabled", u.enabled ? "ok" : "bad")),
      h("td", {}, u.keys.length ? h("ul", { class: "plain" }, u.keys.map((k) => h("li", { "data-key": k.name }, h("span", { class: "mono" }, k.prefix + "…"), " ", k.name, " ", chip(k.state, k.state === "active" ? "ok" : "bad"), budgetBar(usage[k.id]),
        k.state === "active" || k.state === "disabled" ? [" ", h("button", { class: "danger", type: "button", onclick: (ev) => confirm(`Revoke key ${u.name}/${k.name} for good?`) && act(ev.target, () => api("POST", `/keys/${k.id}/revoke`), "key revoked").then(route) }, "Revoke")] : null))) : h("span", { class: "muted" }, "no keys")),
      h("td", { class: "muted" }, budgetBar(usage[u.id]) || (Object.keys(u.limits || {}).length ? JSON.stringify(u.limits) : "–")),
      h("td", {}, h("div", { class: "actions" },
        h("button", { class: "ghost", type: "button", onclick: (ev) => act(ev.target, () => api("POST", `${path}/${u.enabled ? "disable" : "enable"}`), `${u.name} ${u.enabled ? "disabled" : "enabled"}`).then(route) }, u.enabled ? "Disable" : "Enable"),
        h("button", { class: "ghost", type: "button", onclick: (ev) => act(ev.target, () => api("POST", `${path}/${u.role === "admin" ? "demote" : "promote"}`), `${u.name} is now ${u.role === "admin" ? "a user" : "an admin"}`).then(route) }, u.role === "admin" ? "Demote" : "Promote"),
        h("button", { class: "ghost", type: "button", onclick: async (ev) => {
          const out = await act(ev.target, () => api("POST", `${path}/keys`, {}));
          if (out) { secretBox.replaceChildren(h("div", { class: "card" }, h("h2", {}, `New key for ${u.name} (shown once)`), h("p", { class: "secret mono", id: "new-secret" }, out.secret))); await RENDER.users.refresh(); }
        } }, "New key"),
        h("button", { class: "danger", type: "button", onclick: (ev) => confirm(`Remove user ${u.name} and their keys?`) && act(ev.target, () => api("DELETE", path), `${u.name} removed`).then(route) }, "Remove")))));
  }
  const tableEl = table(["user", "role", "state", "keys", "budget / limits", ""], [], () => null);
  tableEl.querySelector("tbody").replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 6, class: "muted" }, "no users: the gateway is open to loopback clients"))]));
  view.replaceChildren(h("h1", {}, "Users and keys"), secretBox, tableEl, h("h2", { style: "margin-top:16px" }, "Create a user"), add,
    h("p", { class: "muted" }, "Budgets and limits: codeswitch user update / key create --budget 5usd/day --rpm N (the bars show the current period's spend)."));
  // a refresh that fails (signed out meanwhile: the sign-in form is up) leaves the page as it is
  RENDER.users.refresh = async () => { const keep = secretBox.firstChild; try { await RENDER.users(view); } catch (e) { return; } if (keep) $("#secret", view).replaceChildren(keep); };
  on(view, (kind, e) => { if (kind === "admin" && /^(user|key|limit)\./.test(e.action)) RENDER.users.refresh(); });
};

RENDER.keys = async (view) => {
  const d = await api("GET", "/keys");
  view.replaceChildren(h("h1", {}, "My keys"), table(["prefix", "name", "state", "models", "expires", "created"], d.keys, (k) => h("tr", {},
    h("td", { class: "mono" }, k.prefix + "…"), h("td", {}, k.name), h("td", {}, chip(k.state, k.state === "active" ? "ok" : "bad")),
    h("td", {}, (k.models || []).join(", ") || "any"), h("td", {}, k.expires ? fmt.time(k.expires) : "never"), h("td", {}, fmt.time(k.created)))));
};

RENDER.sessions = async (view, arg) => {
  if (arg) return sessionDetail(view, arg);
  const d = await api("GET", "/sessions", undefined, { limit: 100 });
  view.replaceChildren(h("h1", {}, "Sessions"), table(["session", "title", "user", "client", "last seen", "requests#", "tokens#", "cost#", "models"], d.sessions, (s) => h("tr", { "data-session": s.session },
    h("td", { class: "mono" }, h("a", { href: "#/sessions/" + encodeURIComponent(s.session) }, s.session.length > 20 ? s.session.slice(0, 20) + "…" : s.session)),
    h("td", {}, s.title || h("span", { class: "muted" }, "–")), h("td", {}, label(d.labels, s.user)), h("td", {}, s.client || "–"), h("td", {}, fmt.ago(s.last_seen)),
    h("td", { class: "num" }, fmt.n(s.requests) + (s.errors ? ` (${s.errors} err)` : "")), h("td", { class: "num" }, fmt.tok(s.total_tokens)), h("td", { class: "num" }, fmt.usd(s.cost)),
    h("td", {}, (s.models || []).join(", ")))));
};
async function sessionDetail(view, id) {
  const s = await api("GET", "/sessions/" + encodeURIComponent(id));
  const admin = state.me.role === "admin";
  const conv = s.conversation === null ? h("p", { class: "muted" }, "No conversation: the body log did not keep this session's bodies (codeswitch body-log on).")
    : h("div", {}, s.conversation.map((t) => h("div", { class: "turn " + t.role }, h("div", { class: "r" }, t.role + (t.kind && t.kind !== "text" ? " · " + t.kind : "")), t.text)));
  view.replaceChildren(h("div", { class: "row" }, h("h1", {}, s.title || "Session"),
      admin ? h("button", { class: "danger", type: "button", id: "delete-session", onclick: async (ev) => {
        if (!confirm(`Delete session ${s.session} (${s.requests} requests) for good? Its facts and bodies are erased; its cost stays in the statistics.`)) return;
        const out = await act(ev.target, () => api("DELETE", "/sessions/" + encodeURIComponent(s.session), undefined, { force: true }));
        if (out) { toast(`session deleted: ${out.requests} requests, ${out.facts_erased} facts erased`); location.hash = "#/sessions"; }
      } }, "Delete session") : null),
    h("p", { class: "mono muted" }, s.session),
    h("div", { class: "grid" }, stat("Requests", fmt.n(s.requests)), stat("Errors", fmt.n(s.errors)), stat("Tokens", fmt.tok(s.total_tokens)), stat("Cost", fmt.usd(s.cost)), stat("User", label(s.labels, s.user))),
    h("div", { class: "card", style: "margin-top:12px" }, h("h2", {}, "Timeline"), table(["time", "model", "provider", "status", "in#", "cache read#", "out#", "cost#", "duration#"], s.timeline, (r) => h("tr", {},
      h("td", {}, fmt.time(r.received_at || r.ts)), h("td", {}, r.model), h("td", {}, r.provider || "–"), h("td", {}, statusChip(r)), h("td", { class: "num" }, fmt.tok(r.input_tokens)),
      h("td", { class: "num" }, fmt.tok(r.cache_read_tokens)), h("td", { class: "num" }, fmt.tok(r.output_tokens)), h("td", { class: "num" }, fmt.usd(r.cost)), h("td", { class: "num" }, fmt.ms(r.duration_ms))))),
    h("div", { class: "card", style: "margin-top:12px" }, h("h2", {}, "Conversation"), conv));
}

RENDER.requests = async (view) => {
  const params = Object.fromEntries(new URLSearchParams(sessionStorage.getItem("cs-log") || ""));
  const f = h("form", { class: "card form", id: "log-filters" },
    ...["provider", "model", "user", "session"].map((n) => h("label", {}, n, h("input", { name: n, value: params[n] || "" }))),
    h("label", {}, "status", h("select", { name: "status" }, ["", "ok", "error", "4xx", "5xx", "429"].map((x) => h("option", { value: x, selected: params.status === x }, x || "any")))),
    h("label", {}, "since", h("select", { name: "hours" }, [["", "any time"], ["1", "last hour"], ["24", "last 24 h"], ["168", "last 7 days"]].map(([v, t]) => h("option", { value: v, selected: params.hours === v }, t)))),
    h("div", {}, h("button", { type: "submit" }, "Filter")));
  f.addEventListener("submit", (ev) => { ev.preventDefault(); sessionStorage.setItem("cs-log", new URLSearchParams(new FormData(f)).toString()); route(); });
  const q = { ...params, limit: 200 };
  if (params.hours) q.since = Date.now() / 1000 - Number(params.hours) * 3600;
  delete q.hours;
  const d = await api("GET", "/log", undefined, q);
  const body = h("tbody", { id: "log-rows" });
  const row = (r, fresh) => h("tr", { class: fresh ? "new" : "", "data-request": r.request_id }, h("td", {}, fmt.time(r.ts)), h("td", {}, r.model), h("td", {}, r.provider || "–"), h("td", {}, statusChip(r)),
    h("td", {}, label(d.labels, r.user_id || r.user)), h("td", {}, r.client || "–"), h("td", { class: "num" }, fmt.tok(r.input_tokens)), h("td", { class: "num" }, fmt.tok(r.output_tokens)),
    h("td", { class: "num" }, fmt.usd(r.cost)), h("td", { class: "num" }, fmt.ms(r.duration_ms)));
  body.replaceChildren(...d.requests.map((r) => row(r, false)));
  view.replaceChildren(h("h1", {}, "Request log"), f, h("div", { class: "card table-wrap", style: "margin-top:12px" }, h("table", {},
    h("thead", {}, h("tr", {}, ["time", "model", "provider", "status", "user", "client", "in", "out", "cost", "duration"].map((c) => h("th", {}, c)))), body)));
  const filtered = ["provider", "model", "user", "session", "status"].some((k) => params[k]);
  on(view, (kind, e) => { if (kind === "request" && !filtered) { body.prepend(row(e, true)); while (body.children.length > 200) body.lastChild.remove(); } });
};

RENDER.stats = async (view) => {
  const sq = statsQuery();
  const { params, range, since, bucket } = sq;
  const f = h("form", { class: "card form", id: "stats-form" },
    h("label", {}, "range", h("select", { name: "range" }, [["1", "24 hours"], ["7", "7 days"], ["30", "30 days"], ["365", "a year"]].map(([v, t]) => h("option", { value: v, selected: String(range) === v }, t)))),
    h("label", {}, "by", h("select", { name: "by" }, ["provider", "model", "user", "key", "dialect", "client", "route"].map((x) => h("option", { value: x, selected: params.by === x }, x)))),
    h("div", {}, h("button", { type: "submit" }, "Show")));
  f.addEventListener("submit", (ev) => { ev.preventDefault(); sessionStorage.setItem("cs-stats", new URLSearchParams(new FormData(f)).toString()); route(); });
  const [d, hm] = await Promise.all([fetchOr("/stats", sq.stats), fetchOr("/heatmap", sq.heatmap)]);
  const o = d.overview;
  const c1 = h("div", { class: "chart" }), c2 = h("div", { class: "chart" });
  view.replaceChildren(h("h1", {}, "Statistics"), f,
    h("div", { class: "grid", style: "margin-top:12px" }, stat("Requests", fmt.n(o.requests)), stat("Error rate", fmt.pct(o.error_rate)), stat("Tokens", fmt.tok(o.total_tokens)),
      stat("Cost", fmt.usd(o.cost)), stat("p50 latency", fmt.ms(o.p50_latency_ms)), stat("p95 TTFB", fmt.ms(o.p95_ttfb_ms))),
    h("div", { class: "cols" }, h("div", { class: "card" }, c1), h("div", { class: "card" }, c2)),
    h("div", { class: "card", style: "margin-top:12px" }, h("h2", {}, "By " + (params.by || "provider")), table(["key", "requests#", "errors#", "error rate#", "tokens#", "cost#", "last#"], d.breakdown, (r) => h("tr", {},
      h("td", {}, label(d.labels, r.key)), h("td", { class: "num" }, fmt.n(r.requests)), h("td", { class: "num" }, fmt.n(r.errors)), h("td", { class: "num" }, fmt.pct(r.error_rate)),
      h("td", { class: "num" }, fmt.tok(r.total_tokens)), h("td", { class: "num" }, fmt.usd(r.cost)), h("td", { class: "num" }, fmt.ago(r.last_ts))))),
    h("div", { class: "card", style: "margin-top:12px" }, h("h2", {}, "Requests per day, last year"), heat(hm.days)));
  // every bucket of the range, empty ones as zero (the ledger returns only buckets with requests)
  const width = bucket === "hour" ? 3600 : 86400;
  const got = new Map(d.series.map((r) => [r.t, r]));
  const xs = [];
  const first = bucket === "hour" ? Math.floor(since / 3600) * 3600 : Math.floor((since + tz) / 86400) * 86400 - tz;
  for (let t = first; t <= Date.now() / 1000; t += width) xs.push(t);
  const pick = (t, k) => (got.has(t) ? got.get(t)[k] || 0 : 0);
  chart(c1, `Requests and errors per ${bucket}`, [xs, xs.map((t) => pick(t, "requests")), xs.map((t) => pick(t, "errors"))], ["requests", "errors"]);
  chart(c2, `Cost (USD) per ${bucket}`, [xs, xs.map((t) => pick(t, "cost"))], ["cost"]);
};
function heat(days) {
  const by = new Map(days.map((d) => [d.day, d]));
  const max = Math.max(1, ...days.map((d) => d.requests));
  const cells = [];
  const end = new Date(); end.setHours(0, 0, 0, 0);
  const start = new Date(end); start.setDate(start.getDate() - 364 - ((start.getDay() + 6) % 7));
  for (const day = new Date(start); day <= end; day.setDate(day.getDate() + 1)) {
    const key = `${day.getFullYear()}-${String(day.getMonth() + 1).padStart(2, "0")}-${String(day.getDate()).padStart(2, "0")}`;
    const d = by.get(key);
    const level = d ? Math.min(4, 1 + Math.floor((d.requests / max) * 3.999)) : 0;
    cells.push(h("span", { class: level ? "h" + level : "", title: `${key}: ${d ? d.requests + " requests, " + fmt.usd(d.cost) : "no requests"}` }));
  }
  return h("div", { class: "heat", role: "img", "aria-label": `daily requests heatmap, ${days.length} days with requests` }, cells);
}

// a form's error: the API's message, and the field it names ({field}) marked and focused
function fieldError(form, e, field) {
  $(".error", form).textContent = e.message;
  for (const input of form.querySelectorAll("input,select,textarea")) input.removeAttribute("aria-invalid");
  const name = field || (e.body && e.body.field);
  const el = name && form.elements[name];
  if (el) { el.setAttribute("aria-invalid", "true"); el.focus(); }
}
const DURATION = /^\s*\d+(\.\d+)?\s*[smhd]?\s*$/i;
// what `alerts add` refuses, said before asking (the API says the same for anything else)
function checkRule(v, percent) {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(v.name)) return ["name", "name must be 1-64 letters, digits, '_' or '-'"];
  const raw = String(v.threshold).trim(), pct = raw.endsWith("%"), num = Number(pct ? raw.slice(0, -1).trim() : raw);
  if (raw === "" || !Number.isFinite(num)) return ["threshold", `threshold ${JSON.stringify(raw)} is not a number`];
  if (percent.includes(v.metric)) {
    if (num < 0) return ["threshold", `${v.metric} is a percentage: ${raw} is below 0 %`];
    if (!pct && num > 0 && num <= 1) return ["threshold", `${v.metric} is a percentage: did you mean ${+(num * 100).toFixed(6)}%? Write ${+(num * 100).toFixed(6)}% (or ${num}% for ${num} %); a bare ${raw} could mean either`];
  } else if (pct) return ["threshold", `${v.metric} is not a percentage: write a plain number, e.g. ${num}`];
  for (const k of ["window", "cooldown"]) if (!DURATION.test(v[k])) return [k, `${k} ${JSON.stringify(v[k])} is not a duration like 90s, 5m, 1h, 2d`];
  if (v.metric === "no_traffic" && !(Number(v.minutes) > 0)) return ["minutes", "no_traffic needs minutes > 0"];
  return null;
}
function ruleForm(d, r) {
  const c = d.choices, edit = !!r;
  const pct = (m) => c.percent.includes(m);
  const opt = (values, cur) => values.map((x) => h("option", { value: x, selected: cur === x }, x));
  const thr = r ? (pct(r.metric) ? r.threshold + "%" : String(r.threshold)) : "";
  const f = h("form", { class: "card form", id: "rule-form", novalidate: true },
    h("label", {}, "Name", h("input", { name: "name", required: true, value: r ? r.name : "", readonly: edit })),
    h("label", {}, "Metric", h("select", { name: "metric" }, Object.entries(c.metrics).map(([m, unit]) => h("option", { value: m, selected: r ? r.metric === m : m === "error_rate", title: unit }, m)))),
    h("label", {}, "Comparison", h("select", { name: "comparison" }, opt(c.comparisons, r ? r.comparison : ">"))),
    h("label", { id: "threshold-label" }, "Threshold", h("input", { name: "threshold", value: thr, placeholder: "20%" })),
    h("label", {}, "Scope (all, provider:X, model:X…)", h("input", { name: "scope", value: r ? r.scope : "all" })),
    h("label", {}, "Window", h("input", { name: "window", value: r ? r.window_s + "s" : "5m" })),
    h("label", {}, "Minutes of silence (no_traffic)", h("input", { name: "minutes", type: "number", min: 0, step: "any", value: r ? r.minutes : 0 })),
    h("label", {}, "Min samples", h("input", { name: "min_samples", type: "number", min: 1, value: r ? r.min_samples : 1 })),
    h("label", {}, "Severity", h("select", { name: "severity" }, opt(c.severities, r ? r.severity : "warning"))),
    h("label", {}, "Cool-down", h("input", { name: "cooldown", value: r ? r.cooldown_s + "s" : "10m" })),
    h("label", {}, h("span", {}, h("input", { name: "remind", type: "checkbox", checked: r ? r.remind : true }), " remind while firing")),
    h("label", {}, h("span", {}, h("input", { name: "enabled", type: "checkbox", checked: r ? r.enabled : true }), " enabled")),
    h("label", { style: "grid-column: 1 / -1" }, `Webhooks, one per line: [${c.channel_formats.join("|")}=]URL, env:NAME or a JSON object` + (edit ? " — empty keeps the current " + r.channels.length : ""),
      h("textarea", { name: "channels", rows: 2, placeholder: edit ? r.channels.join("\n") : "slack=https://hooks.slack.com/services/…" })),
    h("label", { style: "grid-column: 1 / -1" }, "Description (sent with notifications)", h("input", { name: "description", value: r ? r.description : "" })),
    h("div", { class: "actions" }, h("button", { type: "submit" }, edit ? "Save " + r.name : "Add rule"),
      edit ? h("button", { type: "button", class: "ghost", onclick: () => route() }, "Cancel") : null),
    h("p", { class: "error", role: "alert" }));
  const unit = () => { const m = f.elements.metric.value; $("#threshold-label", f).firstChild.textContent = `Threshold (${c.metrics[m]})`; f.elements.threshold.placeholder = pct(m) ? "20%" : "0"; };
  f.elements.metric.addEventListener("change", unit); unit();
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = Object.fromEntries(new FormData(f));
    const bad = checkRule(v, c.percent);
    if (bad) return fieldError(f, { message: bad[1] }, bad[0]);
    const lines = String(v.channels || "").split("\n").map((x) => x.trim()).filter(Boolean);
    const body = { name: v.name, metric: v.metric, threshold: v.threshold, comparison: v.comparison, scope: v.scope.trim() || "all",
      window: v.window, severity: v.severity, cooldown: v.cooldown, remind: f.elements.remind.checked, enabled: f.elements.enabled.checked,
      minutes: Number(v.minutes || 0), min_samples: parseInt(v.min_samples || "1", 10), description: v.description,
      channels: edit && !lines.length ? null : lines };
    try {
      const out = await api(edit ? "PUT" : "POST", edit ? `/alerts/rules/${encodeURIComponent(r.name)}` : "/alerts/rules", body);
      toast(`rule ${out.rule.name} saved`);
      route();
    } catch (e) { fieldError(f, e); }
  });
  return f;
}
function condition(r, percent) {
  if (r.metric === "no_traffic") return `no request for ${r.minutes} min`;
  return `${r.metric} ${r.comparison} ${r.threshold}${percent.includes(r.metric) ? "%" : ""}` + (r.scope !== "all" ? ` (${r.scope})` : "");
}
RENDER.alerts = async (view) => {
  const d = await api("GET", "/alerts");
  const st = {};
  for (const s of d.states) st[s.rule] = s;
  const form = ruleForm(d, null);
  const result = h("div", { id: "rule-test-result", "aria-live": "polite" });
  const test = async (ev, r) => {
    const out = await act(ev.target, () => api("POST", `/alerts/rules/${encodeURIComponent(r.name)}/test`));
    if (!out) return;
    result.replaceChildren(h("div", { class: "card", style: "margin-bottom:12px" }, h("h2", {}, `Test of ${r.name}: ${out.ok ? "sent" : "failed"}`),
      h("ul", { class: "plain" }, out.channels.map((x) => h("li", { "data-channel": x.channel }, chip(x.sent ? "sent" : "failed", x.sent ? "ok" : "bad"), " ", x.channel, " · ", h("span", { class: "muted" }, x.detail))))));
  };
  view.replaceChildren(h("h1", {}, "Alerts"), result,
    h("div", { class: "card" }, h("h2", {}, "Rules"), table(["rule", "condition", "window", "severity", "channels", "state", ""], d.rules, (r) => h("tr", { "data-rule": r.name },
      h("td", {}, h("strong", {}, r.name), r.description ? h("div", { class: "muted" }, r.description) : null), h("td", { class: "mono" }, condition(r, d.choices.percent)),
      h("td", {}, r.window_s + " s"), h("td", {}, r.severity), h("td", {}, r.channels.join(", ") || "–"),
      h("td", {}, st[r.name] && st[r.name].firing ? chip("firing", "bad") : chip(r.enabled ? "ok" : "disabled", r.enabled ? "ok" : "warn")),
      h("td", {}, h("div", { class: "actions" },
        h("button", { class: "ghost", type: "button", disabled: !r.channels.length, title: r.channels.length ? "send a test notification" : "no channels", onclick: (ev) => test(ev, r) }, "Test"),
        h("button", { class: "ghost", type: "button", onclick: () => { $("#rule-form", view).replaceWith(ruleForm(d, r)); $("#rule-form [name=threshold]").focus(); } }, "Edit"),
        h("button", { class: "danger", type: "button", onclick: (ev) => confirm(`Remove rule ${r.name}?`) && act(ev.target, () => api("DELETE", `/alerts/rules/${encodeURIComponent(r.name)}`), `rule ${r.name} removed`).then(route) }, "Remove")))))),
    h("h2", { style: "margin-top:16px" }, "Add or edit a rule"), form,
    h("div", { class: "card", style: "margin-top:12px" }, h("h2", {}, "History"), d.history_error ? h("p", { class: "muted" }, "not available: " + d.history_error) : null, table(["time", "rule", "kind", "severity", "value#"], d.history, (x) => h("tr", {},
      h("td", {}, fmt.time(x.ts)), h("td", {}, x.rule), h("td", {}, x.kind), h("td", {}, x.severity || "–"), h("td", { class: "num" }, x.value === null || x.value === undefined ? "–" : Number(x.value).toFixed(3))))));
  // a rule changed elsewhere shows; a form being filled in is not wiped by it
  on(view, (kind, e) => { if (kind === "alert" || (kind === "admin" && /^rule\.(added|updated|removed)$/.test(e.action) && !$("#rule-form", view).contains(document.activeElement))) route(); });
};

RENDER.mcp = async (view) => {
  const d = await api("GET", "/mcp");
  const f = h("form", { class: "card form", id: "mcp-form", novalidate: true },
    h("label", {}, "Name", h("input", { name: "name", required: true })),
    h("label", {}, "Transport", h("select", { name: "transport" }, ["stdio", "http", "sse"].map((x) => h("option", { value: x }, x)))),
    h("label", { "data-for": "stdio" }, "Command (stdio)", h("input", { name: "command", placeholder: "npx -y @modelcontextprotocol/server-filesystem /srv" })),
    h("label", { "data-for": "stdio" }, "Environment, KEY=VALUE per line", h("textarea", { name: "env", rows: 1 })),
    h("label", { "data-for": "http" }, "URL (http/sse)", h("input", { name: "url", type: "url", placeholder: "https://mcp.example.com/mcp" })),
    h("label", { "data-for": "http" }, "Headers, Name: value per line", h("textarea", { name: "headers", rows: 1 })),
    h("label", {}, h("span", {}, h("input", { name: "enabled", type: "checkbox", checked: true }), " enabled")),
    h("label", {}, h("span", {}, h("input", { name: "replace", type: "checkbox" }), " replace one of that name")),
    h("div", {}, h("button", { type: "submit" }, "Add server")), h("p", { class: "error", role: "alert" }));
  const shown = () => { const http = f.elements.transport.value !== "stdio"; for (const l of f.querySelectorAll("[data-for]")) l.hidden = (l.dataset.for === "http") !== http; };
  f.elements.transport.addEventListener("change", shown); shown();
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = Object.fromEntries(new FormData(f));
    const lines = (x) => String(x || "").split("\n").map((s) => s.trim()).filter(Boolean);
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(v.name)) return fieldError(f, { message: "name must be 1-64 letters, digits, '-' or '_'" }, "name");
    const http = v.transport !== "stdio";
    if (http && !/^https?:\/\//.test(v.url)) return fieldError(f, { message: `an ${v.transport} server needs an http(s) URL` }, "url");
    if (!http && !v.command.trim()) return fieldError(f, { message: "a stdio server needs a command" }, "command");
    const body = { name: v.name, transport: v.transport, enabled: f.elements.enabled.checked, replace: f.elements.replace.checked,
      ...(http ? { url: v.url, headers: lines(v.headers) } : { command: v.command, env: lines(v.env) }) };
    try { const out = await api("POST", "/mcp/servers", body); toast(`${out.server.name} ${out.action === "mcp.updated" ? "replaced" : "added"}`); route(); } catch (e) { fieldError(f, e); }
  });
  view.replaceChildren(h("h1", {}, "MCP servers"),
    h("div", { class: "card" }, table(["name", "transport", "endpoint", "headers / env", "state", ""], d.servers, (m) => h("tr", { "data-mcp": m.name },
      h("td", {}, h("strong", {}, m.name)), h("td", {}, m.transport), h("td", { class: "mono" }, m.url || [m.command, ...(m.args || [])].join(" ")),
      h("td", { class: "muted" }, [...m.headers, ...m.env].join(", ") || "–"), h("td", {}, chip(m.enabled ? "enabled" : "disabled", m.enabled ? "ok" : "warn")),
      h("td", {}, h("div", { class: "actions" },
        h("button", { class: "ghost", type: "button", onclick: (ev) => act(ev.target, () => api("POST", `/mcp/servers/${encodeURIComponent(m.name)}/${m.enabled ? "disable" : "enable"}`), `${m.name} ${m.enabled ? "disabled" : "enabled"}`).then(route) }, m.enabled ? "Disable" : "Enable"),
        h("button", { class: "danger", type: "button", onclick: (ev) => confirm(`Remove MCP server ${m.name}?`) && act(ev.target, () => api("DELETE", `/mcp/servers/${encodeURIComponent(m.name)}`), `${m.name} removed`).then(route) }, "Remove")))))),
    h("h2", { style: "margin-top:16px" }, "Add a server"), f,
    h("p", { class: "muted" }, "One list for every machine, kept in NATS. Each machine writes it into Claude Code and Codex with `codeswitch mcp sync` (header and env values are stored, never shown)."));
  on(view, (kind, e) => { if (kind === "admin" && e.action.startsWith("mcp.") && !f.contains(document.activeElement)) route(); });
};

RENDER.skills = async (view) => {
  const d = await api("GET", "/skills");
  const browse = h("div", { id: "skill-browse" });
  const f = h("form", { class: "card form", id: "skill-form", novalidate: true },
    h("label", {}, "Skill name", h("input", { name: "name", required: true, placeholder: "pdf" })),
    h("label", {}, "From", h("select", { name: "from" }, d.repos.map((r) => h("option", { value: r.name }, r.name + (r.builtin ? " (built in)" : ""))), h("option", { value: "" }, "a URL or directory…"))),
    h("label", { "data-source": true }, "URL, GitHub owner/repo, archive or directory", h("input", { name: "source", placeholder: "/srv/skills or https://…/main.zip" })),
    h("label", { "data-source": true }, "Folder holding the skills", h("input", { name: "subdir", placeholder: "skills" })),
    h("label", { "data-source": true }, "Keep it as repository", h("input", { name: "repo", placeholder: "my-skills" })),
    h("label", {}, h("span", {}, h("input", { name: "force", type: "checkbox" }), " replace a folder not installed by codeswitch")),
    h("div", {}, h("button", { type: "submit" }, "Install")), h("p", { class: "error", role: "alert" }));
  const shown = () => { for (const l of f.querySelectorAll("[data-source]")) l.hidden = f.elements.from.value !== ""; };
  f.elements.from.addEventListener("change", shown); shown();
  f.elements.source.addEventListener("input", () => {
    const base = f.elements.source.value.replace(/[\/]+$/, "").split(/[\/]/).pop().replace(/\.(zip|tar\.gz|tgz|tar)$/, "").replace(/[^A-Za-z0-9_.-]/g, "-").slice(0, 64);
    if (!f.elements.repo.dataset.touched) f.elements.repo.value = base;
  });
  f.elements.repo.addEventListener("input", () => { f.elements.repo.dataset.touched = "1"; });
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const v = Object.fromEntries(new FormData(f));
    if (!v.name.trim()) return fieldError(f, { message: "give the skill's name (its folder, as in SKILL.md)" }, "name");
    const body = { name: v.name.trim(), force: f.elements.force.checked };
    if (v.from) body.repo = v.from;
    else {
      if (!v.source.trim()) return fieldError(f, { message: "give a URL, a GitHub owner/repo, an archive or a directory" }, "source");
      Object.assign(body, { source: v.source.trim(), subdir: v.subdir.trim(), repo: v.repo.trim() });
    }
    const button = $("button[type=submit]", f);
    button.disabled = true; $(".error", f).textContent = "installing…";
    try { const out = await api("POST", "/skills", body); toast(`${out.installed} installed from ${out.repo}`); route(); }
    catch (e) { fieldError(f, e, e.body && e.body.field ? null : (v.from ? "from" : "source")); }
    finally { button.disabled = false; }
  });
  const look = async (ev, r) => {
    browse.replaceChildren(h("p", { class: "muted" }, `reading ${r.name}…`));
    try {
      const out = await api("GET", `/skills/repos/${encodeURIComponent(r.name)}`);
      browse.replaceChildren(h("div", { class: "card", style: "margin-top:12px" }, h("h2", {}, `In ${r.name}`), table(["skill", "description", ""], out.skills, (s) => h("tr", { "data-offer": s.name },
        h("td", {}, h("strong", {}, s.name)), h("td", { class: s.error ? "error" : "" }, s.error ? "invalid: " + s.error : s.description),
        h("td", {}, s.installed ? chip("installed", "ok") : s.error ? null : h("button", { class: "ghost", type: "button", onclick: (e2) => act(e2.target, () => api("POST", "/skills", { name: s.name, repo: r.name }), `${s.name} installed`).then(route) }, "Install"))))));
    } catch (e) { browse.replaceChildren(h("p", { class: "error", role: "alert" }, e.message)); }
  };
  view.replaceChildren(h("h1", {}, "Skills"),
    h("p", { class: "muted" }, "Claude Code skills installed by codeswitch on the gateway's machine, in ", h("span", { class: "mono" }, d.skills_dir), "."),
    h("div", { class: "card" }, h("h2", {}, "Installed"), table(["skill", "repository", "source", "files#", "installed", ""], d.installed, (s) => h("tr", { "data-skill": s.name },
      h("td", {}, h("strong", {}, s.name), s.present ? null : h("div", { class: "error" }, "folder missing")), h("td", {}, s.repo), h("td", { class: "mono" }, s.source + (s.folder && s.folder !== "." ? " · " + s.folder : "")),
      h("td", { class: "num" }, fmt.n(s.files)), h("td", {}, s.installed_at ? fmt.time(Date.parse(s.installed_at) / 1000) : "–"),
      h("td", {}, h("button", { class: "danger", type: "button", onclick: (ev) => confirm(`Remove skill ${s.name}?`) && act(ev.target, () => api("DELETE", `/skills/${encodeURIComponent(s.name)}`), `${s.name} removed`).then(route) }, "Remove"))))),
    h("h2", { style: "margin-top:16px" }, "Install a skill"), f,
    h("div", { class: "card", style: "margin-top:12px" }, h("h2", {}, "Repositories"), table(["name", "source", "folder", "kind", ""], d.repos, (r) => h("tr", { "data-repo": r.name },
      h("td", {}, h("strong", {}, r.name)), h("td", { class: "mono" }, r.source), h("td", {}, r.subdir || "/"), h("td", {}, r.builtin ? "built in" : "added"),
      h("td", {}, h("div", { class: "actions" }, h("button", { class: "ghost", type: "button", onclick: (ev) => look(ev, r) }, "Browse"),
        r.builtin ? null : h("button", { class: "danger", type: "button", onclick: (ev) => confirm(`Remove repository ${r.name}? Its installed skills stay.`) && act(ev.target, () => api("DELETE", `/skills/repos/${encodeURIComponent(r.name)}`), `repository ${r.name} removed`).then(route) }, "Remove")))))),
    browse);
  on(view, (kind, e) => { if (kind === "admin" && /^skill(_repo)?\./.test(e.action) && !f.contains(document.activeElement)) route(); });
};

RENDER.audit = async (view) => {
  const params = Object.fromEntries(new URLSearchParams(sessionStorage.getItem("cs-audit") || ""));
  const f = h("form", { class: "card form", id: "audit-form" },
    h("label", {}, "since", h("input", { name: "since", type: "datetime-local", value: params.since || "" })),
    h("label", {}, "until", h("input", { name: "until", type: "datetime-local", value: params.until || "" })),
    h("label", {}, "actor (glob)", h("input", { name: "actor", value: params.actor || "", placeholder: "local:* or u_…" })),
    h("label", {}, "action (glob)", h("input", { name: "action", value: params.action || "", placeholder: "provider.*" })),
    h("div", {}, h("button", { type: "submit" }, "Filter")));
  f.addEventListener("submit", (ev) => { ev.preventDefault(); sessionStorage.setItem("cs-audit", new URLSearchParams(new FormData(f)).toString()); route(); });
  const q = { actor: params.actor, action: params.action };
  if (params.since) q.since = new Date(params.since).getTime() / 1000;
  if (params.until) q.until = new Date(params.until).getTime() / 1000;
  const d = await api("GET", "/audit", undefined, q);
  view.replaceChildren(h("h1", {}, "Audit log"), f, h("div", { class: "card", style: "margin-top:12px" }, table(["time", "actor", "action", "target", "details"], d.entries, (r) => h("tr", { "data-action": r.action },
    h("td", {}, fmt.time(r.time)), h("td", {}, label(d.labels, r.actor), r.actor.startsWith("u_") ? h("div", { class: "mono muted" }, r.actor) : null), h("td", {}, chip(r.action)),
    h("td", {}, r.target), h("td", { class: "mono muted" }, Object.entries(r.details || {}).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" "))))));
  on(view, (kind) => { if (kind === "admin") setTimeout(route, 500); });
};

// -- wiring ------------------------------------------------------------------------------
$("#signin-key").addEventListener("submit", (ev) => signIn(ev, { key: ev.target.elements.key.value }));
$("#signin-pw").addEventListener("submit", (ev) => signIn(ev, { name: ev.target.elements.name.value, password: ev.target.elements.password.value }));
$("#signout").addEventListener("click", async () => { try { await api("POST", "/signout"); } catch (e) { /* signed out anyway */ } showSignIn(); });
$("#theme").addEventListener("click", () => {
  const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
  document.documentElement.dataset.theme = next;
  try { localStorage.setItem("cs-theme", next); } catch (e) { /* private mode */ }
  if (state.page) route();
});
window.addEventListener("hashchange", route);
start();
