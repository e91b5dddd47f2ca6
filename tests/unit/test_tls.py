"""Gateway and emitter over TLS, with a bearer token: the token never travels in plaintext."""

from __future__ import annotations

import subprocess

import pytest

import runwire
from gateway_helpers import RecordingSink, start_gateway

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1 (openssl, as an operator would make one)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


def test_emitter_delivers_over_tls_with_a_token(certificate, tmp_path):
    cert, key = certificate
    sink = RecordingSink()
    gateway = start_gateway(sink, tokens={"secure": "t0ken"}, tls_cert_file=cert, tls_key_file=key)
    try:
        run = runwire.Run(project="secure", gateway=gateway.address, token="t0ken", tls=True, tls_ca_file=cert,
                          gpu=False, spool_dir=str(tmp_path / "spool"))
        for step in range(100):
            run.log({"loss": 1.0 / (step + 1)}, step=step)
        summary = run.finish(timeout=20)
        assert summary["runwire.unacked"] == 0
        assert len(sink.unique_points()) == 100
    finally:
        gateway.stop()


def test_plaintext_client_cannot_talk_to_a_tls_gateway(certificate, tmp_path):
    cert, key = certificate
    sink = RecordingSink()
    gateway = start_gateway(sink, tls_cert_file=cert, tls_key_file=key)
    try:
        run = runwire.Run(project="p", gateway=gateway.address, gpu=False, spool_dir=str(tmp_path / "spool"))
        run.log({"loss": 1.0}, step=0)
        summary = run.finish(timeout=2)
        assert summary["runwire.unacked"] > 0  # kept in the spool, not lost
        assert sink.point_count() == 0
    finally:
        gateway.stop()
