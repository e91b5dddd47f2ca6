"""`runwire sync`: deliver spooled envelopes after the run (the gateway was unreachable)."""

from __future__ import annotations

from pathlib import Path

import grpc

from runwire.exporter import EmitterConfig, open_channel
from runwire.proto import telemetry_pb2 as pb
from runwire.proto.contract import PUBLISH_METHOD, REJECT, classify_grpc
from runwire.spool import spooled_files



def sync(spool_dir: str | Path, gateway: str | None = None, token: str | None = None,
         timeout_s: float = 30.0, tls: bool | None = None, tls_ca_file: str | None = None) -> tuple[int, int, int]:
    """Send every spooled envelope, oldest first; remove each once acknowledged.

    Returns (delivered, rejected, left). Rejected envelopes (INVALID_ARGUMENT) are removed too:
    resending can never succeed. Storage deduplicates envelopes that were delivered before.
    """
    settings = EmitterConfig.from_settings(gateway=gateway, token=token, tls=tls, tls_ca_file=tls_ca_file)
    metadata = [("authorization", f"Bearer {settings.token}")] if settings.token else None
    delivered = rejected = left = 0
    with open_channel(settings) as channel:
        publish = channel.unary_unary(PUBLISH_METHOD, response_deserializer=pb.Ack.FromString)
        for path in spooled_files(Path(spool_dir)):
            try:
                publish(path.read_bytes(), metadata=metadata, timeout=timeout_s)
                delivered += 1
            except grpc.RpcError as exc:
                if classify_grpc(exc.code().name) == REJECT:
                    rejected += 1
                else:
                    left += 1
                    continue
            path.unlink()
    return delivered, rejected, left
