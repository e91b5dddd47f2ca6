"""Alerting on hardware anomalies: rules, evaluation on the stream and in SQL, lifecycle, notifiers.

Modules (pure cores in thin I/O shells):

    rules.py      the rule model, the built-in rules, the rules-file loader and its validation
    condition.py  the per-(rule, entity) state machine: hysteresis, for- and clear-durations (pure)
    stream.py     stream rules on decoded records as they arrive (pure; sample timestamps)
    periodic.py   straggler, heartbeat and custom SQL rules against ClickHouse every interval_s
    lifecycle.py  pending -> firing -> resolved, deterministic alert ids, re-notify (pure)
    store.py      the `alerts` table (one row per state change, newest updated_at wins)
    notify.py     webhook (JSON), Slack-compatible, log and callback notifiers, each on its own
                  thread behind a bounded queue, retried with runwire.proto.retry
    engine.py     AlertConfig (RUNWIRE_ALERT_*) and build_engine(): observe/start/flush/stop
    report.py     text views: `runwire alerts ls`, a run's alert timeline
    commands.py   `runwire alerts ls`, `runwire alerts rules`
    receiver.py   a local webhook receiver (tests; `python -m runwire.ingest.alerts.receiver`)

Built-in rules (`runwire alerts rules` prints the effective ones):

    gpu_temperature_critical  temperature >= 85 C for 60 s (clear below 82 C for 30 s)    critical
    gpu_temperature_warning   temperature >= 80 C for 5 min (clear below 77 C for 60 s)   warning
    gpu_memory_near_oom       memory used >= 95% of total for 30 s                        warning
    gpu_throttle              thermal, power-cap or hardware slowdown throttling for 60 s  warning
    gpu_ecc_uncorrected       any increase of the uncorrected ECC counter                 critical
    gpu_ecc_corrected_rate    more than 10 corrected ECC errors a minute                  warning
    gpu_xid                   an XID event                                                critical
    gpu_power_at_limit        power draw >= 98% of the power limit for 5 min             info
    loss_nonfinite            NaN or Inf in a metric named like *loss*                    critical
    straggler                 a rank's mean step_time_s >= 1.5x its run's median, 2 min  warning
    heartbeat                 a RUNNING run that sent nothing for 120 s                   warning

Settings (AlertConfig, each also RUNWIRE_ALERT_<NAME>): rules (a TOML or YAML rules file),
webhook_url, slack_url (secrets: never logged), log, periodic (evaluate the SQL rules in this
process: one per cluster), interval_s (15), renotify_s (3600), idle_s (600), queue_size (1024),
notify_queue_size (1000), notify_timeout_s (5), notify_deadline_s (120), adopt (continue the
alerts the table holds open after a restart), enabled.

States in the `alerts` table: pending, firing, resolved, and inactive (a pending alert whose
condition cleared before it fired; never notified). Dashboards showing alerts that happened
should read `state IN ('firing', 'resolved')`.
"""
