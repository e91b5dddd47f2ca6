// Small DOM and formatting helpers.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k === "style") node.setAttribute("style", v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else if (k === "value" || k === "checked" || k === "selected" || k === "disabled" || k === "hidden") node[k] = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === "") continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

export function fmt(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "string") return v; // "NaN", "Infinity"
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e9) return v.toLocaleString();
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(3);
  return Number(v.toPrecision(5)).toString();
}

export function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toISOString().replace("T", " ").slice(0, 19);
}

export function fmtDuration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h}h ${String(m).padStart(2, "0")}m` : `${m}m ${String(r).padStart(2, "0")}s`;
}

export function fmtBytes(b) {
  if (b === null || b === undefined || !isFinite(b)) return "";
  const gib = b / 2 ** 30;
  return gib >= 1 ? `${gib.toFixed(1)} GiB` : `${(b / 2 ** 20).toFixed(0)} MiB`;
}

// NVML clocks-throttle-reason bits (nvmlClocksEventReasons).
const THROTTLE = [[0x2, "app clocks"], [0x4, "SW power cap"], [0x8, "HW slowdown"], [0x10, "sync boost"],
  [0x20, "SW thermal"], [0x40, "HW thermal"], [0x80, "HW power brake"], [0x100, "display clocks"]];
export function throttleNames(bits) {
  bits = Number(bits || 0);
  return THROTTLE.filter(([b]) => bits & b).map(([, n]) => n);
}
