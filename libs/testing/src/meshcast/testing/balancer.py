"""A TCP load balancer for tests: what a Kubernetes Service does for gateways.

Each new connection goes to the first backend that accepts it, trying them
in turn from a rotating start; an existing connection dies with its backend.
No stickiness: a client that reconnects may land on any gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools


class TcpBalancer:
    def __init__(self, backends: list[tuple[str, int]], *, rotate: bool = False) -> None:
        self._backends = backends
        self._rotate = rotate
        self._counter = itertools.count()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.port = 0
        # While True, new connections are refused (a network outage for clients).
        self.refusing = False

    async def start(self) -> TcpBalancer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        for task in list(self._pipes):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def cut(self) -> None:
        """A network outage: every connection through it dropped, new ones refused until `heal`."""
        self.refusing = True
        for task in list(self._pipes):
            task.cancel()
        for task in list(self._pipes):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def heal(self) -> None:
        self.refusing = False

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        start = next(self._counter) if self._rotate else 0
        for i in range(len(self._backends)):
            host, port = self._backends[(start + i) % len(self._backends)]
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port), 2)
            except (OSError, TimeoutError):
                continue
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None if self.refusing else await self._connect()
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst, (writer, up_writer)))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for w in both:
                if self.refusing:  # an outage: no FIN handshake
                    w.transport.abort()
                else:
                    w.close()
