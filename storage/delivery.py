"""Per-rank delivery report: what each rank logged, what was delivered and what was lost (and
where, by step), as `runwire sync` stored it in the rank's summary when the rank had died."""

from __future__ import annotations

KEYS = ("runwire.logged", "runwire.delivered", "runwire.lost", "runwire.lost_first_step", "runwire.lost_last_step")

_SQL = ("SELECT rank, toString(status) AS status, summary FROM run_ranks FINAL "
        "WHERE project = {p:String} AND run_id = {r:String} AND mapContains(summary, 'runwire.logged') ORDER BY rank")


def rank_delivery(client, project: str, run_id: str) -> list[dict]:
    """[{rank, status, logged, delivered, lost, lost_steps}] for ranks with a loss report."""
    out = []
    for rank, status, summary in client.query(_SQL, parameters={"p": project, "r": run_id}).result_rows:
        first, last = summary.get("runwire.lost_first_step"), summary.get("runwire.lost_last_step")
        out.append({"rank": rank, "status": status, "logged": int(summary.get("runwire.logged", 0)),
                    "delivered": int(summary.get("runwire.delivered", 0)), "lost": int(summary.get("runwire.lost", 0)),
                    "lost_steps": f"{int(first)}..{int(last)}" if first is not None and last is not None else ""})
    return out
