"""`runwire sync`: the training side's one command (registered by runwire.deploy.cli)."""

from __future__ import annotations

from runwire.proto.config import EXIT_FAILURE, EXIT_OK


def register(subparsers) -> None:
    """Add this group's subcommands to the `runwire` parser."""
    p = subparsers.add_parser("sync", help="deliver envelopes left in a spool directory")
    p.add_argument("spool_dir")
    add_gateway_options(p)
    p.set_defaults(func=cmd_sync)


def add_gateway_options(parser) -> None:
    """--gateway, --token, --tls, --tls-ca-file: the same on every command that talks to a gateway
    (settings of runwire.exporter.EmitterConfig, each also RUNWIRE_<NAME>)."""
    parser.add_argument("--gateway", default=None, help="host:port (default $RUNWIRE_GATEWAY, else 127.0.0.1:50051)")
    parser.add_argument("--token", default=None, help="bearer token (default $RUNWIRE_TOKEN)")
    parser.add_argument("--tls", action="store_true", default=None, help="connect with TLS (default $RUNWIRE_TLS)")
    parser.add_argument("--tls-ca-file", default=None, help="CA bundle in PEM (default $RUNWIRE_TLS_CA_FILE)")


def cmd_sync(args) -> int:
    from runwire.artifacts import finish_pending
    from runwire.exporter import EmitterConfig
    from runwire.proto.config import build
    from runwire.sync import sync

    # Artifacts a killed run left half uploaded: upload the rest, spool their records (sent below).
    finished, failed = finish_pending(args.spool_dir)
    if finished or failed:
        print(f"artifacts: finished {finished} pending upload(s), {failed} failed")
    gateway = build(EmitterConfig, {"gateway": args.gateway}).gateway
    print(f"runwire sync: delivering {args.spool_dir} to gateway {gateway}", flush=True)
    reports = sync(args.spool_dir, args.gateway, args.token, tls=args.tls, tls_ca_file=args.tls_ca_file)
    for report in reports:
        print(report.line())
    left = sum(r.left for r in reports)
    lost = sum(r.lost for r in reports if not r.skipped)
    print(f"delivered {sum(r.envelopes_now for r in reports)} envelopes ({sum(r.delivered_now for r in reports)} "
          f"points), left {left}, lost {lost} points")
    return EXIT_OK if left == 0 else EXIT_FAILURE
