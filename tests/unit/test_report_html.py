"""The HTML report's pure core: escaping, spike-preserving plots, empty data (no servers)."""

from __future__ import annotations

import datetime as dt
import math
import re
from html.parser import HTMLParser

import pytest

from runwire.storage.report import (
    Bucket, GpuSeries, RunData, Series, fmt_duration, fmt_number, line_chart, nice_ticks, reduce_buckets,
    render_report,
)

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.timezone.utc)

# Tags and attributes the report may contain; anything else (script, img, iframe, on* handlers,
# javascript: URLs) would mean text from the database became markup.
ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "main", "section", "h1", "h2", "h3", "p", "div",
    "span", "table", "thead", "tbody", "tr", "th", "td", "ul", "li", "details", "summary", "figure", "figcaption",
    "svg", "rect", "line", "text", "path", "circle",
}


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data):
        self.text.append(data)


def _parse(document: str) -> _Collector:
    c = _Collector()
    c.feed(document)
    return c


def _curve(values, lo=None, hi=None):
    return [Bucket(float(i), lo[i] if lo else v, hi[i] if hi else v, v, 4) for i, v in enumerate(values)]


def _run(run_id="run-a", **kw) -> RunData:
    run = RunData(run_id=run_id, project="llm", name="demo", status="FINISHED", start_time=T0,
                  end_time=T0 + dt.timedelta(minutes=10), world_size=2,
                  ranks=[{"rank": 0, "local_rank": 0, "node_rank": 0, "host": "node-0", "status": "FINISHED",
                          "points": 100.0, "dropped": 0.0},
                         {"rank": 1, "local_rank": 0, "node_rank": 1, "host": "node-1", "status": "FINISHED",
                          "points": 90.0, "dropped": 2.0}],
                  params={"lr": "0.001", "layers": "24"},
                  curves={"loss": _curve([4 - i * 0.01 for i in range(200)]),
                          "accuracy": _curve([i / 200 for i in range(200)])},
                  last={"loss": 2.0, "accuracy": 0.99}, best={"loss": (2.0, 4.0), "accuracy": (0.0, 0.99)},
                  stored_points=190,
                  gpus=[GpuSeries("node-0 gpu0", 80 * 2**30, [(0, 40), (60, 70)], [(0, 10), (60, 50)])])
    for key, value in kw.items():
        setattr(run, key, value)
    return run


def test_text_from_the_database_is_escaped_everywhere():
    evil = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    a = _run(f"run{evil}", name=evil, params={evil: evil, "lr": "0.1"}, tags={evil: evil},
             curves={f"loss{evil}": _curve([1.0, 2.0, 1.5])}, last={f"loss{evil}": 1.5},
             alerts=[{"run_id": "x", "rule": evil, "severity": evil, "state": evil, "host": evil, "gpu_uuid": evil,
                      "rank": None, "value": 1.0, "message": evil, "started_at": T0, "resolved_at": None}])
    a.ranks[0]["host"] = evil
    a.gpus[0].label = evil
    b = _run("run-b", params={"lr": "0.2"})
    document = render_report([a, b])
    parsed = _parse(document)
    assert set(parsed.tags) <= ALLOWED_TAGS, set(parsed.tags) - ALLOWED_TAGS
    assert not [name for name, _ in parsed.attrs if name.startswith("on")]
    assert not [v for _, v in parsed.attrs if v and "javascript:" in v.lower()]
    # the text survives, as text
    assert any("<script>alert(1)</script>" in t for t in parsed.text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    # and nothing may load or run, even if markup slipped through
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', document).group(1)
    assert "default-src 'none'" in csp and "script-src" not in csp


def test_a_spike_survives_downsampling_into_the_svg_path():
    values = [1.0 + 0.01 * math.sin(i) for i in range(5000)]
    highs = list(values)
    highs[3217] = 50.0  # one rank spiked at one step
    buckets = _curve(values, hi=highs)
    reduced = reduce_buckets(buckets, 400)
    assert len(reduced) <= 400
    assert max(b.hi for b in reduced) == 50.0
    assert min(b.lo for b in reduced) == min(values)
    assert sum(b.count for b in reduced) == sum(b.count for b in buckets)

    svg = line_chart("loss", [Series("run", "#4e79a7", points=[(b.x, b.mean) for b in reduced],
                                     band=[(b.x, b.lo, b.hi) for b in reduced])], "step", "loss",
                     width=600, height=300)
    band = re.search(r'<path d="M([^"]+)"[^>]*class="band"', svg).group(1)
    ys = [float(y) for y in re.findall(r"[\d.]+ ([\d.]+)", band)]
    top, plot_height = 12, 300 - 12 - 42
    assert min(ys) < top + 0.06 * plot_height, "the spike must reach the top of the plot"
    assert sorted(ys)[len(ys) // 2] > top + 0.9 * plot_height, "everything else sits near the bottom"
    # the spike's x position is where it happened
    spike_index = ys.index(min(ys))
    xs = [float(x) for x in re.findall(r"([\d.]+) [\d.]+", band)]
    assert abs(xs[spike_index] - (64 + 3217 / 4999 * (600 - 64 - 14))) < 600 / 400 * 2


def test_empty_data_renders_no_data_notes():
    empty = RunData(run_id="empty-run")
    document = render_report([empty])
    assert document.count('class="nodata"') >= 4  # loss, other metrics, params, GPUs, alerts
    assert "No data" in document
    assert render_report([]).startswith("<!DOCTYPE html>")
    nan = Series("nan", "#000", points=[(0, float("nan")), (1, float("inf"))], band=[(0, float("nan"), 1.0)])
    assert "No data" in line_chart("nan only", [nan], "x", "y")
    assert "No data" in line_chart("nothing", [], "x", "y")


def test_single_points_and_flat_lines_still_draw():
    one = line_chart("one", [Series("s", "#123456", points=[(5, 2.0)], band=[(5, 1.0, 3.0)])], "x", "y")
    assert "<circle" in one and 'class="band"' in one
    flat = line_chart("flat", [Series("s", "#123456", points=[(0, 1.0), (10, 1.0)])], "x", "y")
    assert 'class="line"' in flat and "nan" not in flat.lower()


def test_nonfinite_points_are_counted_not_plotted():
    run = _run(nonfinite={"loss": 3})
    run.curves["loss"].append(Bucket(300.0, float("nan"), float("inf"), float("nan"), 1))
    document = render_report([run])
    assert "3 NaN/Inf points not plotted" in document
    geometry = re.findall(r'\b(?:d|x|y|cx|cy|x1|x2|y1|y2|width|height)="([^"]*)"', document)
    assert geometry and not [g for g in geometry if re.search(r"nan|inf", g, re.I)]


def test_params_diff_shows_only_differing_keys_with_all_params_folded():
    a = _run("a", params={"lr": "0.001", "layers": "24", "only_a": "x"})
    b = _run("b", params={"lr": "0.002", "layers": "24"})
    section = render_report([a, b]).split('id="params"')[1].split("</section>")[0]
    diff, everything = section.split("<details>")
    assert "lr" in diff and "only_a" in diff and "(not set)" in diff and "layers" not in diff
    assert "layers" in everything
    assert "Parameters that differ (2 of 3)" in section


def test_summary_shows_status_ranks_hosts_points_drops():
    document = render_report([_run()])
    summary = document.split('id="summary"')[1].split("</section>")[0]
    for text in ("FINISHED", "node-0, node-1", "190", ">2<", "10:00"):
        assert text in summary, text


def test_number_and_axis_formatting():
    ticks = nice_ticks(0, 1)
    assert len(ticks) == 6 and ticks[0] == 0 and abs(ticks[-1] - 1) < 1e-9
    assert nice_ticks(-0.37, 2.1, 5) == pytest.approx([0, 0.5, 1.0, 1.5, 2.0])
    assert nice_ticks(3, 3) == [3]
    assert fmt_number(3e-4) == "0.0003" and fmt_number(49289242.6) == "4.93e+07" and fmt_number(None) == "–"
    assert fmt_number(12) == "12" and fmt_number(float("nan")) == "nan"
    assert fmt_duration(5) == "0:05" and fmt_duration(3725) == "1:02:05"


def test_report_command_arguments():
    from runwire.deploy.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["report", "run-a", "run-b", "-o", "out.html", "--metrics", "loss,lr"])
    assert args.run_ids == ["run-a", "run-b"] and args.output == "out.html" and args.metrics == "loss,lr"
    assert callable(args.func)


def test_command_without_clickhouse_url_fails_cleanly(monkeypatch, capsys):
    from runwire.deploy.cli import build_parser

    monkeypatch.delenv("RUNWIRE_CLICKHOUSE_URL", raising=False)
    parser = build_parser()
    args = parser.parse_args(["report", "run-a"])
    assert args.func(args) == 2
    assert "RUNWIRE_CLICKHOUSE_URL" in capsys.readouterr().err


@pytest.mark.parametrize("count", [1, 3, 12])
def test_many_runs_get_distinct_colors(count):
    runs = [_run(f"run-{i}") for i in range(count)]
    document = render_report(runs)
    colors = set(re.findall(r'<span class="nowrap"><span class="swatch" style="background:(#[0-9a-f]{6})"></span><span class="mono">',
                            document))
    assert len(colors) == min(count, 10)
