"""A TCP forwarder on loopback between a process and its server (PostgreSQL, Redis), for
outage and crash tests: ``cut()`` drops every connection and refuses new ones (a real
outage as the process sees it), ``open()`` serves again on the same port, and ``hold`` keeps
back the first client message containing those bytes, so the process waits exactly there."""

from __future__ import annotations

import asyncio

from tests.servers import free_port


class TcpGate:
    def __init__(self, upstream_host: str, upstream_port: int, hold: bytes | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.hold = hold
        self.held = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = asyncio.Event()

    async def open(self) -> None:
        if self._server is not None:
            return
        self._cut = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        self._cut.set()
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, from_client=True),
                self._pipe(up_reader, writer, from_client=False),
                return_exceptions=True,
            )
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_client: bool
    ) -> None:
        while data := await reader.read(65536):
            if from_client and self.hold is not None and self.hold in data:
                self.held.set()
                await self._cut.wait()  # never forwarded
                return
            writer.write(data)
            await writer.drain()
        writer.transport.abort()
