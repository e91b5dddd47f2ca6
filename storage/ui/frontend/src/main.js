// runwire's web UI: a hash-routed page over the read-only JSON API (/api/v1). No framework;
// charts are uPlot (canvas). Pages: #/runs, #/run/ID, #/compare?run=A&run=B, #/fleet, #/alerts.
import uPlot from "uplot";
import { api, ApiError, setToken } from "./api.js";
import { LineChart, SERIES_COLORS } from "./chart.js";
import { el, fmt, fmtTime, fmtDuration, fmtBytes, throttleNames, clear } from "./dom.js";

const main = document.getElementById("main");
const projectSelect = document.getElementById("project");
let teardown = null; // the current page's cleanup (timers, charts)

// Tests and the benchmark read what the page drew from here.
window.runwire = { charts: {}, drawnAt: null, pageDrawnAt: null, page: null };

function route() {
  const hash = location.hash || "#/runs";
  const [path, query] = hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  return { page: parts[0] || "runs", arg: parts.slice(1).map(decodeURIComponent).join("/"), params };
}

function setActiveNav(page) {
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.dataset.page === page);
}

async function render() {
  if (teardown) { teardown(); teardown = null; }
  window.runwire.charts = {};
  window.runwire.drawnAt = null;
  window.runwire.pageDrawnAt = null;
  const { page, arg, params } = route();
  window.runwire.page = page;
  setActiveNav(page === "run" || page === "compare" ? "runs" : page);
  clear(main);
  try {
    if (page === "runs") teardown = await runsPage(params);
    else if (page === "run") teardown = await runPage(arg, params);
    else if (page === "compare") teardown = await comparePage(params);
    else if (page === "fleet") teardown = await fleetPage();
    else if (page === "alerts") teardown = await alertsPage(params);
    else main.append(el("p", {}, `No page ${page}.`));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return loginPage();
    main.append(el("pre", { class: "error" }, String(err.message || err)));
  }
}

function loginPage() {
  const input = el("input", { type: "password", placeholder: "project token", autofocus: true });
  const form = el("form", { class: "card login" },
    el("h1", {}, "Sign in"),
    el("p", { class: "muted" }, "This runwire UI needs a project token (RUNWIRE_TOKENS on the server)."),
    input, " ", el("button", { class: "primary", type: "submit" }, "Sign in"));
  form.addEventListener("submit", (e) => { e.preventDefault(); setToken(input.value.trim()); loadProjects().then(render); });
  clear(main);
  main.append(form);
}

// --- projects ------------------------------------------------------------------------------

function currentProject() { return localStorage.getItem("runwire.project") || ""; }

async function loadProjects() {
  let data;
  try { data = await api("/projects"); } catch (err) { if (err.status === 401) return; throw err; }
  clear(projectSelect);
  projectSelect.append(el("option", { value: "" }, "all projects"));
  for (const p of data.projects) projectSelect.append(el("option", { value: p.project }, `${p.project} (${p.runs})`));
  const known = data.projects.some((p) => p.project === currentProject());
  projectSelect.value = known ? currentProject() : "";
}
projectSelect.addEventListener("change", () => { localStorage.setItem("runwire.project", projectSelect.value); render(); });

// --- Runs ----------------------------------------------------------------------------------

const PAGE_SIZE = 50;

async function runsPage(params) {
  const state = {
    filter: params.get("filter") || "", sort: params.get("sort") || "start_time",
    desc: params.get("desc") !== "0", offset: Number(params.get("offset") || 0),
    metrics: JSON.parse(localStorage.getItem("runwire.metricColumns") || "null"),
    params: JSON.parse(localStorage.getItem("runwire.paramColumns") || "[]"),
    selected: new Set(),
  };
  const project = currentProject();
  const columns = await api("/columns", { project });
  if (state.metrics === null) state.metrics = columns.metrics.slice(0, 3).map((m) => [m, "last"]);

  const filterInput = el("input", { type: "text", class: "filter", value: state.filter, id: "filter",
    placeholder: "metrics.loss < 2 and params.lr = '0.001'   (Enter to apply)" });
  const errorBox = el("pre", { class: "error", id: "filter-error", hidden: true });
  const compareBtn = el("button", { class: "primary", id: "compare", disabled: true }, "Compare");
  const total = el("span", { class: "muted", id: "total" });
  const metricPick = el("select", {}, el("option", { value: "" }, "+ metric column"),
    ...columns.metrics.map((m) => el("option", { value: m }, m)));
  const paramPick = el("select", {}, el("option", { value: "" }, "+ param column"),
    ...columns.params.map((p) => el("option", { value: p }, p)));
  const table = el("table", { id: "runs" });
  const pager = el("div", { class: "pager" });
  main.append(el("h1", {}, "Runs"),
    el("div", { class: "toolbar" }, filterInput, compareBtn, total),
    errorBox,
    el("div", { class: "toolbar" }, metricPick, paramPick, el("span", { class: "muted" }, "click a header to sort; ✕ removes a column")),
    el("div", { class: "card", style: "padding:0;overflow:auto" }, table), pager);

  const save = () => {
    localStorage.setItem("runwire.metricColumns", JSON.stringify(state.metrics));
    localStorage.setItem("runwire.paramColumns", JSON.stringify(state.params));
  };
  metricPick.addEventListener("change", () => {
    if (metricPick.value) { state.metrics.push([metricPick.value, "last"]); save(); load(); }
    metricPick.value = "";
  });
  paramPick.addEventListener("change", () => {
    if (paramPick.value && !state.params.includes(paramPick.value)) { state.params.push(paramPick.value); save(); load(); }
    paramPick.value = "";
  });
  filterInput.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { state.filter = filterInput.value; state.offset = 0; load(); }
  });
  compareBtn.addEventListener("click", () => {
    location.hash = "#/compare?" + [...state.selected].map((r) => "run=" + encodeURIComponent(r)).join("&");
  });

  let seq = 0;
  async function load() {
    const mine = ++seq;
    const query = { project, filter: state.filter, sort: state.sort, desc: state.desc ? 1 : 0,
      offset: state.offset, limit: PAGE_SIZE, metric: [...new Set(state.metrics.map((m) => m[0]))], param: state.params };
    // Checked first, so a typo shows its caret message without a failed request.
    const check = state.filter ? await api("/filter", { filter: state.filter }) : { valid: true };
    if (mine !== seq) return;
    if (!check.valid) { errorBox.textContent = check.error; errorBox.hidden = false; return; }
    const page = await api("/runs", query);
    if (mine !== seq) return;
    errorBox.hidden = true;
    drawTable(page);
  }

  function header(label, key, numeric, remove) {
    const sorted = state.sort === key;
    const th = el("th", { class: `sortable${sorted ? " sorted" : ""}${numeric ? " num" : ""}`, "data-sort": key },
      label + (sorted ? (state.desc ? " ▼" : " ▲") : ""));
    th.addEventListener("click", () => {
      if (state.sort === key) state.desc = !state.desc; else { state.sort = key; state.desc = !numeric ? false : true; }
      state.offset = 0; load();
    });
    if (remove) {
      const x = el("a", { href: "#", title: "remove column" }, " ✕");
      x.addEventListener("click", (e) => { e.preventDefault(); e.stopPropagation(); remove(); save(); load(); });
      th.append(x);
    }
    return th;
  }

  function drawTable(page) {
    clear(table);
    const head = el("tr", {}, el("th", {}, ""),
      header("run", "name"), header("status", "status"), header("user", "user"), header("start", "start_time"),
      header("duration", "duration", true), header("ranks", "ranks", true), header("hosts", "hosts", true));
    state.metrics.forEach(([m, stat], i) => {
      const th = header(m, `metrics.${m}.${stat}`, true, () => state.metrics.splice(i, 1));
      const statPick = el("select", { title: "last / min / max" }, ...["last", "min", "max"].map((s) => el("option", { value: s, selected: s === stat }, s)));
      statPick.addEventListener("click", (e) => e.stopPropagation());
      statPick.addEventListener("change", () => { state.metrics[i][1] = statPick.value; save(); load(); });
      th.append(" ", statPick);
      head.append(th);
    });
    state.params.forEach((p, i) => head.append(header(p, `params.${p}`, false, () => state.params.splice(i, 1))));
    table.append(el("thead", {}, head));
    const body = el("tbody");
    for (const run of page.runs) {
      const box = el("input", { type: "checkbox", checked: state.selected.has(run.run_id) });
      box.addEventListener("change", () => {
        if (box.checked) state.selected.add(run.run_id); else state.selected.delete(run.run_id);
        updateCompare();
      });
      const tr = el("tr", { "data-run": run.run_id }, el("td", {}, box),
        el("td", {}, el("a", { href: `#/run/${encodeURIComponent(run.run_id)}` }, run.name || run.run_id)),
        el("td", {}, el("span", { class: `status ${run.status}` }, run.status)),
        el("td", {}, run.user || ""), el("td", {}, fmtTime(run.start_time)),
        el("td", { class: "num" }, fmtDuration(run.duration_s)), el("td", { class: "num" }, run.ranks),
        el("td", { class: "num", title: run.hosts.join(", ") }, run.hosts.length));
      for (const [m, stat] of state.metrics) tr.append(el("td", { class: "num" }, fmt(run.metrics[m]?.[stat])));
      for (const p of state.params) tr.append(el("td", {}, run.params[p] ?? ""));
      body.append(tr);
    }
    table.append(body);
    total.textContent = `${page.total.toLocaleString()} runs`;
    clear(pager);
    const prev = el("button", { disabled: state.offset === 0 }, "‹ prev");
    const next = el("button", { disabled: state.offset + PAGE_SIZE >= page.total, id: "next" }, "next ›");
    prev.addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE_SIZE); load(); });
    next.addEventListener("click", () => { state.offset += PAGE_SIZE; load(); });
    pager.append(prev, el("span", { class: "muted" },
      page.total ? `${state.offset + 1}–${Math.min(page.total, state.offset + page.runs.length)} of ${page.total.toLocaleString()}` : "no runs"), next);
    window.runwire.drawnAt = performance.now();
  }

  function updateCompare() {
    const n = state.selected.size;
    compareBtn.disabled = n < 2 || n > 20;
    compareBtn.textContent = n ? `Compare ${n}` : "Compare";
  }

  await load();
  return () => { seq++; };
}

// --- Run -----------------------------------------------------------------------------------

// Charts fill their grid cell (the grid's columns are at least 520 px wide).
function gridChartWidth(grid) {
  const w = grid.clientWidth || 1000;
  return Math.max(300, Math.floor((w - 12 * (Math.max(1, Math.floor(w / 520)) - 1)) / Math.max(1, Math.floor(w / 520))) - 14);
}

function chartOptionsBox(opts, onChange) {
  const xSel = el("select", { id: "xaxis" }, ...[["step", "step"], ["wall", "wall time"], ["relative", "relative time"]]
    .map(([v, t]) => el("option", { value: v, selected: opts.x === v }, t)));
  const smooth = el("input", { type: "range", min: 0, max: 0.99, step: 0.01, value: opts.smoothing, id: "smoothing" });
  const log = el("input", { type: "checkbox", checked: opts.log, id: "logscale" });
  const perRank = el("input", { type: "checkbox", checked: opts.perRank, id: "perrank" });
  xSel.addEventListener("change", () => { opts.x = xSel.value; onChange("x"); });
  smooth.addEventListener("change", () => { opts.smoothing = Number(smooth.value); onChange("smoothing"); });
  log.addEventListener("change", () => { opts.log = log.checked; onChange("log"); });
  perRank.addEventListener("change", () => { opts.perRank = perRank.checked; onChange("perRank"); });
  const box = el("div", { class: "toolbar" }, el("label", {}, "x ", xSel), el("label", {}, "smoothing ", smooth),
    el("label", {}, log, " log scale"));
  if (opts.perRank !== undefined) box.append(el("label", {}, perRank, " per-rank lines"));
  box.append(el("span", { class: "muted" }, "drag to zoom (re-queries at full resolution), double-click to reset"));
  return box;
}

async function runPage(runId, params) {
  const alertsP = api(`/runs/${encodeURIComponent(runId)}/alerts`);
  alertsP.catch(() => {}); // awaited below; a 404 of the run itself is reported instead
  let run = await api(`/runs/${encodeURIComponent(runId)}`);
  const opts = { x: params.get("x") || "step", smoothing: 0, log: false, perRank: false };
  const timers = [];
  const charts = new Map(); // metric -> LineChart
  const header = el("div");
  const chartGrid = el("div", { class: "grid", id: "charts" });
  const details = el("div");
  const gpuBox = el("div", { class: "gpus", id: "gpus" });
  main.append(header, chartOptionsBox(opts, () => rebuild()), chartGrid, details, el("h2", {}, "GPUs"), gpuBox);

  const apiX = () => (opts.x === "step" ? "step" : "time");
  const startMs = () => Date.parse(run.start_time);

  function drawHeader() {
    clear(header);
    header.append(el("h1", {}, run.name || run.run_id, " ", el("span", { class: `status ${run.status}`, id: "run-status" }, run.status)),
      el("div", { class: "muted" }, `${run.run_id} · project ${run.project} · started ${fmtTime(run.start_time)} · `,
        `${fmtDuration(((run.end_time ? Date.parse(run.end_time) : Date.now()) - startMs()) / 1000)} · `,
        `${run.world_size} ranks on ${run.hosts.length} hosts`));
  }

  function drawDetails() {
    clear(details);
    const kv = (obj) => el("div", { class: "kv" }, ...Object.entries(obj).flatMap(([k, v]) => [el("div", {}, k), el("div", {}, String(v))]));
    const stragglers = new Map(run.stragglers.map((s) => [s.rank, s]));
    const rankRows = run.ranks.map((r) => {
      const s = stragglers.get(r.rank);
      return el("tr", { class: s?.straggler ? "straggler" : "" }, el("td", {}, r.host), el("td", { class: "num" }, r.rank),
        el("td", { class: "num" }, r.local_rank), el("td", {}, r.status),
        el("td", { class: "num" }, s ? fmt(s.median) : ""), el("td", { class: "num" }, s ? fmt(s.ratio) + "×" : ""),
        el("td", {}, s?.straggler ? el("span", { class: "straggler-badge" }, "straggler") : ""));
    });
    details.append(el("div", { class: "cols" },
      el("div", { class: "card" }, el("h2", {}, "Params"), Object.keys(run.params).length ? kv(run.params) : el("span", { class: "muted" }, "none"),
        el("h2", {}, "Tags"), Object.keys(run.tags).length ? kv(run.tags) : el("span", { class: "muted" }, "none")),
      el("div", { class: "card" }, el("h2", {}, `Ranks and hosts (straggler: median ${run.straggler_metric} ≥ 1.5× the run's)`),
        el("table", { id: "ranks" }, el("tr", {}, ...["host", "rank", "local", "status", `median ${run.straggler_metric}`, "ratio", ""].map((h) => el("th", {}, h))), ...rankRows))));
  }

  // Chart data from the API -> uPlot columns for one run.
  function toXs(xs) {
    if (opts.x === "step") return xs;
    if (opts.x === "wall") return xs.map((v) => v / 1000);
    const s = startMs();
    return xs.map((v) => (v - s) / 1000);
  }
  function fromX(v) { // chart x -> API x
    if (opts.x === "step") return v;
    if (opts.x === "wall") return v * 1000;
    return v * 1000 + startMs();
  }

  async function fetchCurves(metric, range) {
    const width = charts.get(metric)?.width() || chartWidth();
    const q = { x: apiX(), buckets: Math.max(50, Math.round(width)), per_rank: opts.perRank ? 1 : 0 };
    if (metric) q.metric = metric;
    if (range) { q.lo = Math.floor(fromX(range[0])); q.hi = Math.ceil(fromX(range[1])); }
    return (await api(`/runs/${encodeURIComponent(runId)}/curves`, q)).metrics;
  }

  const chartWidth = () => gridChartWidth(chartGrid);

  function seriesFor(metric, data) {
    const s = data.runs[runId];
    if (!s) return null;
    const out = { x: toXs(s.x), bands: [{ min: s.min, max: s.max, mean: s.mean, label: "mean of ranks",
      hover: { min_rank: s.min_rank, min_step: s.min_step, max_rank: s.max_rank, max_step: s.max_step, count: s.count } }], lines: [] };
    if (s.ranks) for (const [rank, line] of Object.entries(s.ranks)) out.lines.push({ label: `rank ${rank}`, x: toXs(line.x), y: line.last });
    return out;
  }

  let drawSeq = 0; // only the newest redraw may replace the charts (options change quickly)
  async function drawCharts() {
    const mine = ++drawSeq;
    const data = await fetchCurves(null, null);
    if (mine !== drawSeq) return;
    for (const c of charts.values()) c.destroy();
    charts.clear();
    clear(chartGrid);
    const names = Object.keys(data).sort();
    if (!names.length) chartGrid.append(el("p", { class: "muted" }, "No metrics logged yet."));
    for (const metric of names) {
      const box = el("div", { class: "chart", "data-metric": metric });
      chartGrid.append(box);
      const chart = new LineChart(box, {
        title: metric, xTime: opts.x === "wall", xLabel: { step: "step", wall: "", relative: "seconds since start" }[opts.x],
        log: opts.log, smoothing: opts.smoothing, width: chartWidth(),
        onZoom: async (range) => { chart.setSeries(seriesFor(metric, (await fetchCurves(metric, range))[metric] || emptyCurve()), range); },
        onReset: async () => { chart.setSeries(seriesFor(metric, (await fetchCurves(metric, null))[metric] || emptyCurve()), null); },
        markers: alertMarkers(),
      });
      chart.setSeries(seriesFor(metric, data[metric]), null);
      charts.set(metric, chart);
      window.runwire.charts[metric] = chart;
    }
    window.runwire.drawnAt = performance.now();
    performance.mark("runwire:charts-drawn");
  }
  const emptyCurve = () => ({ runs: {} });

  let alerts = [];
  function alertMarkers() { // [x in chart units, label]
    return alerts.map((a) => {
      const t = Date.parse(a.started_at);
      return opts.x === "wall" ? [t / 1000, a.rule] : opts.x === "relative" ? [(t - startMs()) / 1000, a.rule] : null;
    }).filter(Boolean);
  }

  async function drawGpus() {
    const data = await api(`/runs/${encodeURIComponent(runId)}/gpus`, { buckets: 200 });
    clear(gpuBox);
    if (!data.gpus.length) { gpuBox.append(el("p", { class: "muted" }, "No GPU samples.")); return; }
    for (const gpu of data.gpus) {
      const s = gpu.series;
      const throttled = throttleNames(s.throttle_reasons.reduce((a, b) => a | (b || 0), 0));
      const mine = alerts.filter((a) => (a.gpu_uuid && a.gpu_uuid === gpu.gpu_uuid) || (!a.gpu_uuid && a.host === gpu.host));
      const box = el("div", { class: "chart gpu", "data-gpu": gpu.gpu_uuid });
      gpuBox.append(box);
      const t = s.t.map((v) => v / 1000);
      const memTotal = Math.max(...s.memory_total_bytes.filter((v) => v != null), 0);
      box.append(el("div", { class: "muted", style: "margin:0 4px" },
        `${fmtBytes(Math.max(...s.memory_used_bytes.filter((v) => v != null), 0))} / ${fmtBytes(memTotal)} max used · `,
        `power ≤ ${fmt(Math.max(...s.power_w.filter((v) => v != null), 0))} W · SM clock ≥ ${fmt(Math.min(...s.sm_clock_mhz.filter((v) => v != null)))} MHz`,
        throttled.length ? el("span", { class: "throttle" }, ` · throttled: ${throttled.join(", ")}`) : ""));
      const chart = new LineChart(box, {
        title: `${gpu.host} · GPU ${gpu.gpu_index} · ${gpu.gpu_name}`, xTime: true, width: 400, height: 170,
        markers: mine.map((a) => [Date.parse(a.started_at) / 1000, a.rule]), legend: true,
      });
      chart.setSeries({ x: t, bands: [], lines: [
        { label: "temp °C", x: t, y: s.temperature_c },
        { label: "util %", x: t, y: s.gpu_utilization_pct },
        { label: "mem %", x: t, y: s.memory_used_bytes.map((v, i) => (v == null || !s.memory_total_bytes[i] ? null : (100 * v) / s.memory_total_bytes[i])) },
        { label: "power % of limit", x: t, y: s.power_w.map((v, i) => (v == null || !s.power_limit_w[i] ? null : (100 * v) / s.power_limit_w[i])) },
      ] }, null);
      window.runwire.charts[`gpu:${gpu.gpu_uuid}`] = chart;
    }
  }

  async function rebuild() {
    await drawCharts();
  }

  drawHeader();
  drawDetails();
  alerts = (await alertsP).alerts;
  await Promise.all([drawCharts(), drawGpus()]);
  window.runwire.pageDrawnAt = performance.now(); // every chart of the page drawn (bench/ui.py)

  // Live: while RUNNING, new points appear by themselves (charts the user zoomed stay put).
  let busy = false;
  const tick = async () => {
    if (busy || run.status !== "RUNNING") return;
    busy = true;
    try {
      run = await api(`/runs/${encodeURIComponent(runId)}`);
      drawHeader();
      const seq = drawSeq;
      const data = await fetchCurves(null, null);
      if (seq !== drawSeq) return; // the charts were rebuilt meanwhile
      const fresh = Object.keys(data).filter((m) => !charts.has(m));
      if (fresh.length) { await drawCharts(); } else {
        for (const [metric, chart] of charts) if (!chart.zoomed && data[metric]) chart.setSeries(seriesFor(metric, data[metric]), null);
      }
      if (run.status !== "RUNNING") { drawDetails(); alerts = (await api(`/runs/${encodeURIComponent(runId)}/alerts`)).alerts; drawGpus(); }
    } catch (err) {
      console.warn("live update failed", err);
    } finally { busy = false; }
  };
  timers.push(setInterval(tick, 1000));
  timers.push(setInterval(() => { if (run.status === "RUNNING") drawGpus().catch((e) => console.warn(e)); }, 5000));
  return () => { timers.forEach(clearInterval); for (const c of charts.values()) c.destroy(); };
}

// --- Compare -------------------------------------------------------------------------------

async function comparePage(params) {
  const runIds = params.getAll("run");
  if (runIds.length < 2) { main.append(el("p", {}, "Select 2 to 20 runs on the Runs page to compare.")); return null; }
  const opts = { x: "step", smoothing: 0, log: false };
  const grid = el("div", { class: "grid", id: "charts" });
  const tables = el("div");
  const charts = [];
  main.append(el("h1", {}, `Compare ${runIds.length} runs`), chartOptionsBox(opts, () => draw()), grid, tables);
  let result;
  async function fetch(metric, range) {
    const q = { run: runIds, x: opts.x === "step" ? "step" : "time", buckets: 600 };
    if (metric) q.metric = metric;
    if (range) { const f = opts.x === "step" ? (v) => v : (v) => v * 1000; q.lo = Math.floor(f(range[0])); q.hi = Math.ceil(f(range[1])); }
    return api("/compare", q);
  }
  const label = (r) => `${result.runs[r].name || r} (${r})`;
  function seriesOf(metricData) {
    const lines = [], bands = [];
    runIds.forEach((r) => {
      const s = metricData.runs[r];
      const xs = s ? (opts.x === "step" ? s.x : s.x.map((v) => v / 1000)) : [];
      lines.push({ label: label(r), x: xs, y: s ? s.mean : [] });
    });
    return { x: null, bands, lines };
  }
  let drawSeq = 0;
  async function draw() {
    const mine = ++drawSeq;
    const fresh = await fetch(null, null);
    if (mine !== drawSeq) return;
    result = fresh;
    charts.forEach((c) => c.destroy());
    charts.length = 0;
    clear(grid);
    for (const metric of Object.keys(result.metrics).sort()) {
      const box = el("div", { class: "chart", "data-metric": metric });
      grid.append(box);
      const chart = new LineChart(box, {
        title: metric, xTime: opts.x !== "step", log: opts.log, smoothing: opts.smoothing, width: gridChartWidth(grid),
        onZoom: async (range) => chart.setSeries(seriesOf((await fetch(metric, range)).metrics[metric] || { runs: {} }), range),
        onReset: async () => chart.setSeries(seriesOf((await fetch(metric, null)).metrics[metric] || { runs: {} }), null),
      });
      chart.setSeries(seriesOf(result.metrics[metric]), null);
      charts.push(chart);
      window.runwire.charts[metric] = chart;
    }
    drawTables();
    window.runwire.drawnAt = performance.now();
  }
  function drawTables() {
    clear(tables);
    const swatch = (i) => el("span", { class: "legend-swatch", style: `background:${SERIES_COLORS[i % SERIES_COLORS.length]}` });
    const head = el("tr", {}, el("th", {}, ""), ...runIds.map((r, i) => el("th", {}, swatch(i), el("a", { href: `#/run/${encodeURIComponent(r)}` }, label(r)))));
    const paramRows = Object.entries(result.params).map(([k, per]) => el("tr", {}, el("td", {}, k), ...runIds.map((r) => el("td", {}, per[r] ?? "—"))));
    const metricRows = [];
    for (const [name, per] of Object.entries(result.summary || {})) {
      for (const stat of ["last", "min", "max"]) {
        metricRows.push(el("tr", {}, el("td", {}, `${name} (${stat === "last" ? "final" : stat})`),
          ...runIds.map((r) => el("td", { class: "num" }, fmt(per[r]?.[stat])))));
      }
    }
    tables.append(
      el("h2", {}, "Params that differ"),
      el("div", { class: "card", style: "padding:0;overflow:auto" }, el("table", { id: "params-diff" }, head.cloneNode(true), ...(paramRows.length ? paramRows : [el("tr", {}, el("td", { colspan: runIds.length + 1, class: "muted" }, "no params differ"))]))),
      el("h2", {}, "Final and best values"),
      el("div", { class: "card", style: "padding:0;overflow:auto" }, el("table", { id: "final-best" }, head.cloneNode(true), ...metricRows)));
  }
  await draw();
  return () => charts.forEach((c) => c.destroy());
}

// --- GPU fleet -----------------------------------------------------------------------------

function heat(temp) { // 30 °C blue-green -> 90 °C red
  const f = Math.max(0, Math.min(1, ((temp ?? 30) - 30) / 60));
  return `hsl(${Math.round(140 - 140 * f)}, 70%, ${Math.round(78 - 18 * f)}%)`;
}

async function fleetPage() {
  const windowSel = el("select", { id: "window" }, ...[[300, "5 min"], [900, "15 min"], [3600, "1 hour"], [86400, "1 day"]]
    .map(([v, t]) => el("option", { value: v, selected: v === 900 }, t)));
  const body = el("div");
  main.append(el("h1", {}, "GPU fleet"), el("div", { class: "toolbar" }, el("label", {}, "GPUs seen in the last ", windowSel)), body);
  async function load() {
    const data = await api("/fleet", { project: currentProject(), window_s: windowSel.value });
    clear(body);
    if (!data.gpus.length) { body.append(el("p", { class: "muted" }, "No GPU reported in this window.")); return; }
    const byHost = new Map();
    for (const g of data.gpus) { if (!byHost.has(g.host)) byHost.set(g.host, []); byHost.get(g.host).push(g); }
    const tiles = el("div", { class: "tiles", id: "fleet-tiles" });
    for (const host of [...byHost.keys()].sort()) {
      for (const g of byHost.get(host).sort((a, b) => a.gpu_index - b.gpu_index)) {
        const used = g.memory_total_bytes ? g.memory_used_bytes / g.memory_total_bytes : 0;
        const throttled = throttleNames(g.throttle_reasons);
        tiles.append(el("a", { class: "tile", href: g.run_id ? `#/run/${encodeURIComponent(g.run_id)}` : "#/fleet",
          style: `background:${heat(g.temperature_c)};text-decoration:none`, title: `${g.gpu_uuid}\nrun ${g.run_id} rank ${g.rank}\nmax ${fmt(g.max_temperature_c)} °C` },
          el("div", {}, `${host} · ${g.gpu_index}`), el("b", {}, `${fmt(g.temperature_c)} °C`),
          el("div", {}, `mem ${Math.round(100 * used)}% · ${fmtBytes(g.headroom_bytes)} free`),
          el("div", { class: "bar" }, el("i", { style: `width:${Math.round(100 * used)}%` })),
          throttled.length ? el("div", { class: "throttle" }, throttled.join(", ")) : ""));
      }
    }
    const hottest = data.gpus.slice(0, 10);
    body.append(el("div", { class: "card" }, el("h2", {}, `${data.gpus.length} GPUs on ${byHost.size} hosts (colour: temperature)`), tiles),
      el("h2", {}, "Hottest GPUs"),
      el("table", { id: "hottest" }, el("tr", {}, ...["host", "gpu", "run", "rank", "now °C", "max °C", "memory used", "util %", "power W", "throttle"].map((h) => el("th", {}, h))),
        ...hottest.map((g) => el("tr", {}, el("td", {}, g.host), el("td", {}, `${g.gpu_index} ${g.gpu_name}`),
          el("td", {}, g.run_id ? el("a", { href: `#/run/${encodeURIComponent(g.run_id)}` }, g.run_id) : ""), el("td", { class: "num" }, g.rank ?? ""),
          el("td", { class: "num" }, fmt(g.temperature_c)), el("td", { class: "num" }, fmt(g.max_temperature_c)),
          el("td", { class: "num" }, `${fmtBytes(g.memory_used_bytes)} / ${fmtBytes(g.memory_total_bytes)}`),
          el("td", { class: "num" }, fmt(g.gpu_utilization_pct)), el("td", { class: "num" }, fmt(g.power_w)),
          el("td", { class: "throttle" }, throttleNames(g.throttle_reasons).join(", "))))));
    window.runwire.drawnAt = performance.now();
  }
  windowSel.addEventListener("change", load);
  await load();
  const timer = setInterval(() => load().catch((e) => console.warn(e)), 10000);
  return () => clearInterval(timer);
}

// --- Alerts --------------------------------------------------------------------------------

async function alertsPage(params) {
  const stateSel = el("select", { id: "state" }, ...[["", "all"], ["open", "open"], ["resolved", "resolved"]]
    .map(([v, t]) => el("option", { value: v, selected: (params.get("state") || "") === v }, t)));
  const body = el("div");
  main.append(el("h1", {}, "Alerts"), el("div", { class: "toolbar" }, el("label", {}, "state ", stateSel)), body);
  async function load() {
    const data = await api("/alerts", { project: currentProject(), state: stateSel.value, limit: 500 });
    clear(body);
    if (!data.alerts.length) { body.append(el("p", { class: "muted" }, "No alerts.")); window.runwire.drawnAt = performance.now(); return; }
    body.append(el("table", { id: "alerts" },
      el("tr", {}, ...["state", "severity", "rule", "run", "host", "GPU", "rank", "value", "message", "started", "resolved"].map((h) => el("th", {}, h))),
      ...data.alerts.map((a) => el("tr", {}, el("td", {}, a.state), el("td", { class: `severity-${a.severity}` }, a.severity),
        el("td", {}, a.rule), el("td", {}, a.run_id ? el("a", { href: `#/run/${encodeURIComponent(a.run_id)}` }, a.run_id) : ""),
        el("td", {}, a.host), el("td", { title: a.gpu_uuid }, a.gpu_uuid ? a.gpu_uuid.slice(0, 12) : ""), el("td", { class: "num" }, a.rank ?? ""),
        el("td", { class: "num" }, fmt(a.value)), el("td", {}, a.message), el("td", {}, fmtTime(a.started_at)), el("td", {}, fmtTime(a.resolved_at))))));
    window.runwire.drawnAt = performance.now();
  }
  stateSel.addEventListener("change", load);
  await load();
  const timer = setInterval(() => load().catch((e) => console.warn(e)), 10000);
  return () => clearInterval(timer);
}

window.addEventListener("hashchange", render);
loadProjects().then(render).catch((err) => { main.append(el("pre", { class: "error" }, String(err.message || err))); });
export { uPlot };
