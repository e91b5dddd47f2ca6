"""Liveness against real ClickHouse (chDB): a rank whose data stops without a RunEnd becomes
CRASHED once the lapse passes, its run too; data resuming sets both RUNNING again; a finished
rank is never touched; a RunEnd sent by `runwire sync` for a dead rank is stored as CRASHED."""

from __future__ import annotations

import pytest

from runwire.ingest.liveness import CRASHED, RUNNING, Liveness, RankState, decide, run_status
from runwire.proto.contract import EXIT_CRASHED
from runwire.storage.writer import StorageWriter
from test_storage_chdb import MINUTE, T0, db, metrics, new_client, run_end, run_start  # noqa: F401 (fixtures)

US = 1000  # ns per microsecond


def test_decide_is_pure_and_symmetric():
    running = RankState("p", "r", 0, RUNNING, changed_us=0, last_seen_us=1_000_000)
    assert decide([running], now_us=100_000_000, lapse_s=120) == []
    assert decide([running], now_us=122_000_000, lapse_s=120) == [(running, CRASHED)]
    crashed = RankState("p", "r", 0, CRASHED, changed_us=200_000_000, last_seen_us=150_000_000)
    assert decide([crashed], now_us=300_000_000, lapse_s=120) == []
    resumed = RankState("p", "r", 0, CRASHED, changed_us=200_000_000, last_seen_us=250_000_000)
    assert decide([resumed], now_us=300_000_000, lapse_s=120) == [(resumed, RUNNING)]
    assert run_status([CRASHED, "FINISHED"]) == CRASHED and run_status([CRASHED, RUNNING]) == RUNNING
    assert run_status(["FINISHED"]) is None


def statuses(client, run_id: str) -> tuple[str, dict[int, str]]:
    run = client.query("SELECT toString(status) FROM runs FINAL WHERE run_id = {r:String}",
                       parameters={"r": run_id}).result_rows[0][0]
    ranks = dict(client.query("SELECT rank, toString(status) FROM run_ranks FINAL WHERE run_id = {r:String}",
                              parameters={"r": run_id}).result_rows)
    return run, ranks


def test_a_silent_rank_is_crashed_then_running_again_when_data_resumes(db):
    writer = StorageWriter(db)
    start_ns = T0 + 123_456_789
    writer.write([run_start("live", 0, start_ns), run_start("live", 1, start_ns)])
    # Rank 0 logs for a minute, rank 1 finishes normally.
    writer.write([metrics("live", 0, ["loss"], [("loss", s, start_ns + s * 10**9, 1.0) for s in range(60)])])
    writer.write([run_end("live", 1, start_ns + MINUTE, 0)])
    liveness = Liveness(db, lapse_s=120)

    assert liveness.check(now_us=(start_ns + 2 * MINUTE) // US) == []  # within the lapse
    assert statuses(db, "live") == (RUNNING, {0: RUNNING, 1: "FINISHED"})

    crash_at = start_ns + 5 * MINUTE
    changes = liveness.check(now_us=crash_at // US)
    assert [(s.rank, status) for s, status in changes] == [(0, CRASHED)]
    assert statuses(db, "live") == (CRASHED, {0: CRASHED, 1: "FINISHED"})
    assert liveness.check(now_us=(crash_at + MINUTE) // US) == []  # stays crashed, written once

    # Data resumes (the rank was only stalled): RUNNING again, the run too.
    later = crash_at + 2 * MINUTE
    writer.write([metrics("live", 0, ["loss"], [("loss", 100, later, 0.5)], seq=5)])
    changes = liveness.check(now_us=(later + 10**9) // US)
    assert [(s.rank, status) for s, status in changes] == [(0, RUNNING)]
    assert statuses(db, "live") == (RUNNING, {0: RUNNING, 1: "FINISHED"})


def test_a_runend_sent_for_a_dead_rank_is_stored_as_crashed(db):
    writer = StorageWriter(db)
    writer.write([run_start("dead", 0, T0)])
    end = run_end("dead", 0, T0 + 2 * MINUTE, EXIT_CRASHED)
    writer.write([end])
    run, ranks = statuses(db, "dead")
    assert run == CRASHED and ranks == {0: CRASHED}
    assert Liveness(db, lapse_s=1).check(now_us=(T0 + 60 * MINUTE) // US) == []  # not RUNNING: left alone


def test_the_loss_report_of_a_dead_rank_is_what_runs_show_prints(db):
    from runwire.storage.delivery import rank_delivery
    from runwire.sync import StreamReport
    from test_storage_chdb import decoded, identity
    from runwire.proto import telemetry_pb2 as pb

    writer = StorageWriter(db)
    writer.write([run_start("lossy", 0, T0), run_start("lossy", 1, T0)])
    report = StreamReport("dir", logged=30_000, delivered=29_100, lost=900, lost_steps=(9_700, 9_999))
    env = pb.Envelope(seq=50, identity=identity("lossy", 1))
    env.run_end.end_time_ns, env.run_end.exit_code = T0 + MINUTE, EXIT_CRASHED
    env.run_end.summary.update(report.summary())
    writer.write([decoded(env, T0 + MINUTE)])
    assert rank_delivery(db, "vision", "lossy") == [
        {"rank": 1, "status": CRASHED, "logged": 30_000, "delivered": 29_100, "lost": 900, "lost_steps": "9700..9999"}]
