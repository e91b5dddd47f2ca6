// One uPlot chart: a min-max band across ranks with its mean line, and/or plain lines (per-rank
// lines, compared runs, GPU fields). Zoom by dragging: the owner re-queries the range at the
// chart's pixel width (onZoom) and hands back finer buckets; double-click resets (onReset).
import uPlot from "uplot";
import { el, fmt } from "./dom.js";

export const SERIES_COLORS = ["#2f6fde", "#e4572e", "#29a35a", "#9b51e0", "#f2a900", "#17becf", "#d6336c",
  "#6c757d", "#8c564b", "#1f3b73", "#7cb342", "#ff7043", "#5c6bc0", "#26a69a", "#ab47bc", "#ffa726",
  "#78909c", "#ec407a", "#9ccc65", "#42a5f5"];

// Axis ticks: short, and never "0" for small values (uPlot's default rounds 3e-4 to 0).
function tick(v) {
  if (v === null || v === undefined) return "";
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 1e9) return (v / 1e9).toPrecision(3).replace(/\.?0+$/, "") + "G";
  if (a >= 1e6) return (v / 1e6).toPrecision(3).replace(/\.?0+$/, "") + "M";
  if (a >= 1e4) return (v / 1e3).toPrecision(3).replace(/\.?0+$/, "") + "k";
  if (a < 1e-2) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

function ema(ys, alpha) { // TensorBoard-style smoothing, skipping gaps
  if (!alpha) return ys;
  let last = null;
  return ys.map((v) => { if (v === null || v === undefined) return v; last = last === null ? v : last * alpha + (1 - alpha) * v; return last; });
}

export class LineChart {
  constructor(box, opts) {
    this.box = box;
    this.opts = Object.assign({ width: 520, height: 220, smoothing: 0, log: false, markers: [] }, opts);
    this.zoomed = false;
    this.u = null;
    this.series = null;
    this.drawCount = 0;
    this.hover = el("div", { class: "hover" });
    this.legend = el("div", { class: "muted", style: "margin:0 4px;font-size:11px" });
    box.append(el("div", { class: "title" }, opts.title), this.legend, this.hover);
    this.holder = el("div");
    box.append(this.holder);
  }

  width() { return this.opts.width; }

  // series: {x, bands: [{min, max, mean, label, hover}], lines: [{label, x, y}]}; range: [lo, hi] or null.
  setSeries(series, range) {
    if (!series) series = { x: [], bands: [], lines: [] };
    this.series = series;
    this.zoomed = !!range;
    const log = this.opts.log;
    const clean = (ys) => (log ? ys.map((v) => (v === null || v <= 0 ? null : v)) : ys);
    const tables = [];
    const specs = [];
    for (const band of series.bands) {
      tables.push([series.x, clean(band.min), clean(band.max), clean(ema(band.mean, this.opts.smoothing))]);
      specs.push({ kind: "band", band });
    }
    for (const line of series.lines) {
      tables.push([line.x, clean(ema(line.y, this.opts.smoothing))]);
      specs.push({ kind: "line", line });
    }
    const data = tables.length ? (tables.length === 1 ? tables[0] : uPlot.join(tables)) : [[]];
    this.bandIndex = new Map((series.x || []).map((x, i) => [x, i]));
    const layout = specs.map((s) => s.kind).join(",");
    if (!this.u || this.layout !== layout) {
      this.layout = layout;
      this.build(data, specs);
    } else {
      this.u.setData(data, !range);
    }
    if (range) this.u.setScale("x", { min: range[0], max: range[1] });
  }

  build(data, specs) {
    if (this.u) this.u.destroy();
    const uSeries = [{ label: "x" }];
    const bands = [];
    let color = 0;
    for (const s of specs) {
      if (s.kind === "band") {
        const c = SERIES_COLORS[color++ % SERIES_COLORS.length];
        const base = uSeries.length;
        uSeries.push({ label: "min", stroke: c + "55", width: 1, points: { show: false } });
        uSeries.push({ label: "max", stroke: c + "55", width: 1, points: { show: false } });
        uSeries.push({ label: s.band.label, stroke: c, width: 1.5, spanGaps: true });
        bands.push({ series: [base + 1, base], fill: c + "26" });
      } else {
        uSeries.push({ label: s.line.label, stroke: SERIES_COLORS[color++ % SERIES_COLORS.length], width: 1.25, spanGaps: true });
      }
    }
    this.specs = specs;
    if (this.opts.legend) {
      this.legend.textContent = "";
      specs.forEach((s, i) => {
        if (s.kind !== "line") return;
        const c = uSeries.find((u) => u.label === s.line.label).stroke;
        this.legend.append(el("span", { style: "margin-right:10px" }, el("span", { class: "legend-swatch", style: `background:${c}` }), s.line.label));
      });
    }
    const self = this;
    const opts = {
      width: this.opts.width, height: this.opts.height,
      scales: { x: { time: !!this.opts.xTime }, y: this.opts.log ? { distr: 3 } : {} },
      axes: [{ label: this.opts.xLabel || undefined, size: this.opts.xLabel ? 40 : 30,
        ...(this.opts.xTime ? {} : { values: (u, splits) => splits.map(tick) }) },
        { size: 56, values: (u, splits) => splits.map(tick) }],
      series: uSeries, bands,
      legend: { show: false },
      cursor: { drag: { x: true, y: false, setScale: false }, points: { size: 6 } },
      hooks: {
        setSelect: [(u) => {
          if (u.select.width < 3) return;
          const lo = u.posToVal(u.select.left, "x"), hi = u.posToVal(u.select.left + u.select.width, "x");
          u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
          if (self.opts.onZoom) self.opts.onZoom([lo, hi]); else { self.zoomed = true; u.setScale("x", { min: lo, max: hi }); }
        }],
        setCursor: [(u) => self.showHover(u)],
        draw: [(u) => { self.drawMarkers(u); self.drawCount++; }],
      },
    };
    this.u = new uPlot(opts, data, this.holder);
    this.u.over.addEventListener("dblclick", () => {
      this.zoomed = false;
      if (this.opts.onReset) this.opts.onReset(); else this.u.setData(this.u.data, true);
    });
  }

  drawMarkers(u) {
    const markers = this.opts.markers || [];
    if (!markers.length) return;
    const ctx = u.ctx;
    ctx.save();
    ctx.strokeStyle = "#c62828";
    ctx.fillStyle = "#c62828";
    ctx.setLineDash([4, 3]);
    ctx.font = `${10 * devicePixelRatio}px system-ui`;
    for (const [x, label] of markers) {
      const px = u.valToPos(x, "x", true);
      if (!(px >= u.bbox.left && px <= u.bbox.left + u.bbox.width)) continue;
      ctx.beginPath(); ctx.moveTo(px, u.bbox.top); ctx.lineTo(px, u.bbox.top + u.bbox.height); ctx.stroke();
      ctx.fillText(`⚠ ${label}`, px + 3, u.bbox.top + 10 * devicePixelRatio);
    }
    ctx.restore();
  }

  showHover(u) {
    const idx = u.cursor.idx;
    if (idx === null || idx === undefined) { this.hover.textContent = ""; return; }
    const x = u.data[0][idx];
    const xText = this.opts.xTime ? new Date(x * 1000).toISOString().slice(11, 19) : fmt(x);
    const lines = [`x ${xText}`];
    let col = 1;
    for (const s of this.specs) {
      if (s.kind === "band") {
        const i = this.bandIndex.get(x);
        const h = s.band.hover || {};
        if (i !== undefined) {
          lines.push(`${s.band.label} ${fmt(u.data[col + 2][idx])}`);
          lines.push(`max ${fmt(s.band.max[i])} (rank ${h.max_rank?.[i]}, step ${h.max_step?.[i]})`);
          lines.push(`min ${fmt(s.band.min[i])} (rank ${h.min_rank?.[i]}, step ${h.min_step?.[i]})`);
          if (h.count) lines.push(`${h.count[i]} points`);
        }
        col += 3;
      } else {
        const v = u.data[col][idx];
        if (v !== null && v !== undefined) lines.push(`${s.line.label} ${fmt(v)}`);
        col += 1;
      }
    }
    this.hover.textContent = "";
    for (const line of lines.slice(0, 12)) this.hover.append(el("div", {}, line));
  }

  // For tests and the benchmark: the x values and the highest max the chart holds.
  xs() { return this.u ? Array.from(this.u.data[0]) : []; }
  bandMax() { return this.series && this.series.bands[0] ? Math.max(...this.series.bands[0].max.filter((v) => v !== null)) : null; }
  lineCount() { return this.series ? this.series.lines.length + this.series.bands.length : 0; }

  destroy() { if (this.u) { this.u.destroy(); this.u = null; } }
}
