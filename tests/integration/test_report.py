"""The HTML report on demo data, rendered by headless Chromium.

Two demo runs (2 nodes x 2 ranks each, through the real gateway and ingest writer into a fresh
ClickHouse database), plus what the demo cannot produce by itself: a parameter that differs, a
loss spike on one rank and two alerts. The report is written to ``build/report.html`` and
Chromium (Debian's ``chromium`` package; ``make test`` installs it) must render it with no console
message at all (the report has no script, and its Content-Security-Policy turns any fetch or
script into a console error), save ``build/report.png``, and paint the plots: the pixels inside
plot areas must show both runs' colours and many distinct colours.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
from demo_data import demo_database

BUILD = Path(__file__).resolve().parents[2] / "build"
RUN_A = f"report-a-{uuid.uuid4().hex[:6]}"
RUN_B = f"report-b-{uuid.uuid4().hex[:6]}"
RUN_COLORS = {"a": (0x4E, 0x79, 0xA7), "b": (0xF2, 0x8E, 0x2B)}  # report.PALETTE[0], [1]
PLOT_BACKGROUND = (0xFB, 0xFC, 0xFD)                               # report.CSS svg .plotarea
WINDOW = (1400, 3000)


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    message = "chromium is not installed (Debian: apt-get install -y chromium; `make test` does it)"
    if any((os.environ.get(v) or "").strip().lower() in ("1", "true", "yes", "on") for v in ("CI", "RUNWIRE_REQUIRE_INFRA")):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _run_chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    command = [_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
               "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
               f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
               *args, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=90,
                          env=dict(os.environ, HOME=str(tmp_path)))


def _console_messages(stderr: str) -> list[str]:
    """Chromium logs every console message (errors, CSP violations, uncaught exceptions) as CONSOLE."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


# ------------------------------------------------------------------------------------------
# A tiny PNG decoder (8-bit RGB/RGBA, no interlace: what Chromium writes)
# ------------------------------------------------------------------------------------------


def read_png(path: Path) -> np.ndarray:
    """Pixels as an (height, width, 3) uint8 array."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            break
    width, height, depth, color_type, _, _, interlace = header
    assert depth == 8 and color_type in (2, 6) and interlace == 0, f"unsupported PNG {header}"
    bpp = 3 if color_type == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, 1 + width * bpp)
    out = np.zeros((height, width * bpp), np.uint8)
    prev = np.zeros(width * bpp, np.int64)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int64)
        if kind == 0:
            cur = line
        elif kind == 1:  # Sub: running sum per channel
            cur = np.cumsum(line.reshape(width, bpp), axis=0).reshape(-1) & 255
        elif kind == 2:  # Up
            cur = (line + prev) & 255
        elif kind in (3, 4):  # Average, Paeth: sequential along the row
            values, above, cur_list = line.tolist(), prev.tolist(), [0] * (width * bpp)
            for i in range(width * bpp):
                a = cur_list[i - bpp] if i >= bpp else 0
                b = above[i]
                if kind == 3:
                    cur_list[i] = (values[i] + ((a + b) >> 1)) & 255
                else:
                    c = above[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    cur_list[i] = (values[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            cur = np.array(cur_list, np.int64)
        else:
            raise AssertionError(f"bad PNG filter {kind}")
        out[y] = cur
        prev = cur
    return out.reshape(height, width, bpp)[:, :, :3]


# ------------------------------------------------------------------------------------------
# Demo data and the report
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report_client(clickhouse_url):
    """A fresh database with two demo runs, a differing parameter, a loss spike and two alerts."""
    with demo_database(clickhouse_url, "rw_report", [(RUN_A, 3.0), (RUN_B, 2.0)]) as client:
        _add_what_the_demo_lacks(client)
        yield client


def _add_what_the_demo_lacks(client) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    client.insert("params", [["demo", RUN_B, "lr", "0.001", now], ["demo", RUN_B, "note <b>bold?</b>", "x<y", now]],
                  column_names=["project", "run_id", "key", "value", "updated_at"])
    step, ts = client.query("SELECT step, ts FROM metrics WHERE run_id = {r:String} AND name = 'loss' AND rank = 2 "
                            "ORDER BY step LIMIT 1 OFFSET 100", parameters={"r": RUN_A}).result_rows[0]
    client.insert("metrics", [["demo", RUN_A, "loss", 2, step, ts, 40.0]],
                  column_names=["project", "run_id", "name", "rank", "step", "ts", "value"])
    host, gpu, first = client.query("SELECT host, gpu_uuid, min(ts) FROM gpu_samples WHERE run_id = {r:String} "
                                    "GROUP BY host, gpu_uuid ORDER BY host, gpu_uuid LIMIT 1",
                                    parameters={"r": RUN_A}).result_rows[0]
    client.insert("alerts", [
        ["demo", f"{RUN_A}-temp", "gpu_temperature_critical", "critical", "firing", RUN_A, host, gpu, None, 91.0,
         "GPU temperature 91 C <script>alert(1)</script>", first + dt.timedelta(seconds=1), None, now],
        ["demo", f"{RUN_A}-strag", "straggler", "warning", "resolved", RUN_A, "node-1", "", 3, 1.7,
         "rank 3 step time 1.7x the run median", first, first + dt.timedelta(seconds=2), now],
    ], column_names=["project", "alert_id", "rule", "severity", "state", "run_id", "host", "gpu_uuid", "rank",
                     "value", "message", "started_at", "resolved_at", "updated_at"])


@pytest.fixture(scope="module")
def report_path(report_client) -> Path:
    from runwire.storage.report import write_report

    path = write_report(report_client, [RUN_A, RUN_B], BUILD / "report.html")
    assert path == BUILD / "report.html" and path.stat().st_size > 10_000
    return path


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_report_renders_in_chromium_without_console_errors(report_path, tmp_path):
    # The console check must be able to fail: a page with a script error is caught.
    canary = tmp_path / "canary.html"
    canary.write_text("<!DOCTYPE html><html><body><script>console.error('canary'); nope();</script></body></html>")
    caught = _console_messages(_run_chromium(tmp_path, canary.as_uri(), "--dump-dom").stderr)
    assert any("canary" in m for m in caught) and any("Uncaught" in m for m in caught), caught

    screenshot = BUILD / "report.png"
    screenshot.unlink(missing_ok=True)
    done = _run_chromium(tmp_path, report_path.as_uri(), f"--screenshot={screenshot}",
                         f"--window-size={WINDOW[0]},{WINDOW[1]}")
    assert screenshot.exists(), f"no screenshot (rc {done.returncode}):\n{done.stderr[-3000:]}"
    assert _console_messages(done.stderr) == []

    pixels = read_png(screenshot).astype(np.int64)
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    # Rows that cross a plot area: those with many pixels of the plot background.
    plot_rows = ((pixels == PLOT_BACKGROUND).all(axis=2).sum(axis=1) >= 200)
    assert plot_rows.sum() >= 600, "the plot areas are missing"
    inside = pixels[plot_rows]
    for run, color in RUN_COLORS.items():
        near = (np.abs(inside - color).sum(axis=2) <= 30).sum()
        assert near >= 500, f"run {run}'s colour covers only {near} pixels in the plots: its curves are not drawn"
    flat = inside.reshape(-1, 3)
    distinct = len(np.unique(flat[:, 0] * 65536 + flat[:, 1] * 256 + flat[:, 2]))
    assert distinct >= 100, f"only {distinct} colours in the plots"
    painted = 1 - (inside == PLOT_BACKGROUND).all(axis=2).mean() - (inside == (255, 255, 255)).all(axis=2).mean()
    assert painted > 0.05, f"plots are nearly blank ({painted:.1%} painted)"


@pytest.mark.timeout(120)
def test_report_dom_holds_every_part(report_path, tmp_path):
    done = _run_chromium(tmp_path, report_path.as_uri(), "--dump-dom")
    dom = done.stdout
    assert "</html>" in dom, done.stderr[-2000:]
    assert _console_messages(done.stderr) == []
    assert "<script" not in dom.lower()
    sections = {s: dom.split(f'id="{s}"')[1].split("</section>")[0]
                for s in ("summary", "loss", "metrics", "gpus", "params", "alerts")}
    for run_id in (RUN_A, RUN_B):
        assert run_id in sections["summary"] and run_id in sections["loss"]
    assert sections["summary"].count("FINISHED") >= 2 and "node-0, node-1" in sections["summary"]
    assert sections["loss"].count("<svg") == 1 and sections["loss"].count('class="band"') == 2
    assert sections["metrics"].count("<svg") >= 4  # accuracy, lr, step_time_s, tokens_per_s
    assert sections["gpus"].count("<svg") == 4      # temperature and memory, per run
    assert "lr" in sections["params"] and "0.001" in sections["params"] and "0.0003" in sections["params"]
    assert "note &lt;b&gt;bold?&lt;/b&gt;" in sections["params"]
    assert "gpu_temperature_critical" in sections["alerts"] and "straggler" in sections["alerts"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in sections["alerts"]
    # The loss spike (40 on one rank, the curve sits near 5) reaches the top of the loss plot.
    band = re.search(r'<path d="M([^"]+)"[^>]*class="band"', sections["loss"]).group(1)
    ys = sorted(float(y) for y in re.findall(r"[\d.]+ ([\d.]+)", band))
    assert ys[0] < 12 + 0.1 * (380 - 54) < ys[len(ys) // 2]


def test_unknown_run_is_a_clear_error(report_client, tmp_path):
    from runwire.storage.report import write_report

    with pytest.raises(LookupError, match="no-such-run"):
        write_report(report_client, [RUN_A, "no-such-run"], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_report_command_writes_the_file(report_client, clickhouse_url, tmp_path, capsys):
    from runwire.deploy.cli import build_parser

    parser = build_parser()
    out = tmp_path / "sub" / "cmp.html"
    database = report_client.database
    args = parser.parse_args(["report", RUN_B, RUN_A, "-o", str(out), "--clickhouse-url", clickhouse_url,
                              "--database", database, "--metrics", "loss,lr"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    document = out.read_text()
    assert document.index(RUN_B) < document.index(RUN_A)  # runs in the order given
    metrics = document.split('id="metrics"')[1].split("</section>")[0]
    assert metrics.count("<svg") == 1 and "<figcaption>lr</figcaption>" in metrics

    args = parser.parse_args(["report", "no-such-run", "-o", str(tmp_path / "x.html"), "--clickhouse-url",
                              clickhouse_url, "--database", database])
    assert args.func(args) == 2
    assert "no-such-run" in capsys.readouterr().err and not (tmp_path / "x.html").exists()
