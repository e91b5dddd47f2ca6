"""Fixtures shared by the emitter and gateway tests: a real gateway over a recording sink."""

from __future__ import annotations

import pytest

from gateway_helpers import RecordingSink, start_gateway


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def gateway(sink):
    gw = start_gateway(sink)
    yield gw
    sink.release()
    gw.stop(grace=0.5)
