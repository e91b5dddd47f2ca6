// The JSON API client: one place that adds the token and turns errors into ApiError.
export class ApiError extends Error {
  constructor(status, message, body) { super(message); this.status = status; this.body = body; }
}

export function setToken(token) { localStorage.setItem("runwire.token", token); }

export async function api(path, query = {}) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v === undefined || v === null || v === "") continue;
    for (const item of Array.isArray(v) ? v : [v]) qs.append(k, item);
  }
  const headers = {};
  const token = localStorage.getItem("runwire.token");
  if (token) headers.Authorization = `Bearer ${token}`;
  const url = `/api/v1${path}${qs.toString() ? "?" + qs : ""}`;
  const res = await fetch(url, { headers });
  const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new ApiError(res.status, body.error || `HTTP ${res.status}`, body);
  return body;
}
