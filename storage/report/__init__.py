"""`runwire report RUN... -o report.html`: one self-contained HTML file comparing runs.

The report holds a run summary (status, ranks, hosts, points, drops), the loss curves of every
run with the min-max band across ranks, the other key metrics the same way, GPU temperature and
memory per GPU, a table of the parameters that differ, and the alerts that fired on a timeline.

Everything is inline: the plots are SVG drawn here, the styles sit in one <style> element, and
there is no script at all. A Content-Security-Policy meta tag forbids every fetch and every
script, so the file opens offline and text from the database (run names, parameters, alert
messages) can never run as code; all of it is also escaped.

Modules, one job each:

    model.py    the plain data the page needs (RunData, Bucket, GpuSeries) and reduce_buckets (pure)
    data.py     load_report_data: reads it through runwire.storage.query.RunQueries only
    svg.py      the SVG chart library: line charts with min-max bands, a timeline, ticks (pure)
    page.py     render_report: the HTML document and its sections (pure)
    write.py    write_report: the data, rendered, to a file (`runwire report` is in ../commands.py)

Curves are downsampled in SQL per step bucket keeping the minimum and maximum across ranks, so a
spike of any rank stays visible in the band; `reduce_buckets` merges buckets the same way if a
caller hands over more than a plot can show.
"""

from runwire.storage.report.data import load_report_data
from runwire.storage.report.model import Bucket, GpuSeries, RunData, reduce_buckets
from runwire.storage.report.page import render_report
from runwire.storage.report.svg import Series, fmt_duration, fmt_number, line_chart, nice_ticks, timeline_chart
from runwire.storage.report.write import write_report

__all__ = ["Bucket", "GpuSeries", "RunData", "Series", "load_report_data", "render_report", "write_report",
           "reduce_buckets", "line_chart", "timeline_chart", "nice_ticks", "fmt_number", "fmt_duration"]
