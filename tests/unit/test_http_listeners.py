"""The HTTP listeners (MLflow API, UI) hand asyncio sockets on which it turns Nagle's algorithm
off: with it on, every response's body waited for the client's delayed ACK (~40 ms a request)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from runwire.ingest.mlflow.server import bind as mlflow_bind
from runwire.storage.ui.server import bind as ui_bind


def _accepted_nodelay(sock: socket.socket) -> int:
    """TCP_NODELAY of a connection that asyncio accepted on ``sock``."""
    async def main() -> int:
        seen: asyncio.Future = asyncio.get_running_loop().create_future()

        def on_connect(reader, writer) -> None:
            if not seen.done():
                seen.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            try:
                return await asyncio.wait_for(seen, 10)
            finally:
                writer.close()

    return asyncio.run(main())


@pytest.mark.parametrize("bind", [lambda: mlflow_bind("127.0.0.1:0"), lambda: ui_bind("127.0.0.1", 0)],
                         ids=["mlflow", "ui"])
def test_accepted_connections_have_nagle_off(bind):
    sock = bind()
    sock.setblocking(False)
    assert _accepted_nodelay(sock) != 0
