// Read in <head>, before the style sheets, uPlot and app.js: asks at once for who is signed
// in (/me) and the first page's data, so those answers are on their way while the rest of
// the page loads (app.js takes them: fetchOr). Measured with a 1,000,000-request ledger, the
// statistics page's calls left ~40-80 ms earlier than from the end of app.js
// (bench/bench_console.py). Shared with app.js: API, tz, statsQuery, EARLY.
"use strict";
const API = "/admin/api";
const tz = -new Date().getTimezoneOffset() * 60;
const EARLY = new Map();
function statsQuery() {
  const params = Object.fromEntries(new URLSearchParams(sessionStorage.getItem("cs-stats") || "range=7&by=provider"));
  const range = Number(params.range || 7);
  const since = Date.now() / 1000 - range * 86400;
  const bucket = range <= 7 ? "hour" : "day";
  return { params, range, since, bucket,
    // only what the page shows: fewer columns to aggregate and to send (docs/console.md)
    stats: { since, bucket, by: params.by || "provider", tz_offset_s: tz, fields: "total_tokens,cost,last_ts,p50_latency_ms,p95_ttfb_ms" },
    heatmap: { since: Date.now() / 1000 - 365 * 86400, tz_offset_s: tz, fields: "cost" } };
}
(function () {
  function early(path, params) {
    const url = new URL(API + path, location.origin);
    for (const [k, v] of Object.entries(params || {})) url.searchParams.set(k, v);
    const p = fetch(url, { headers: { accept: "application/json" }, credentials: "same-origin" });
    p.catch(() => {}); // app.js reports it when it takes the answer
    EARLY.set(path, p);
  }
  early("/me");
  const first = (location.hash.replace(/^#\/?/, "").split("/")[0]) || "dashboard";
  if (first === "dashboard") early("/dashboard", { tz_offset_s: tz });
  if (first === "stats") { const sq = statsQuery(); early("/stats", sq.stats); early("/heatmap", sq.heatmap); }
})();
