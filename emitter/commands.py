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
    from runwire.sync import sync

    delivered, rejected, left = sync(args.spool_dir, args.gateway, args.token, tls=args.tls,
                                     tls_ca_file=args.tls_ca_file)
    print(f"delivered {delivered} envelopes, rejected {rejected}, left {left}")
    return EXIT_OK if left == 0 else EXIT_FAILURE
