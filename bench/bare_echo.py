"""The baseline: the same echo handlers on a bare grpc.aio server (no SKM runtime).

Usage: python -m bench.bare_echo HOST:PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc

from tests.support import echo_service


async def main(addr: str) -> None:
    server = grpc.aio.server()
    echo_service.register(server)
    server.add_insecure_port(addr)
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
