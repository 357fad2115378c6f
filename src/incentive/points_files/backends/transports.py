"""Where partner files come from and answers go: one ``Transport`` protocol, two backends.

A partner's URL names its root directory; inside it ``inbox/`` receives ``POINTS_*`` files,
``outbox/`` our ``FEEDBACK_*``/``EXCEPTION_*`` answers and ``archive/`` (when enabled) the
inbound files we are done with. Sub-directory names are options.

- ``file:///srv/partners/acme`` — a local (or mounted) directory.
- ``sftp://user@host:22/srv/acme`` — SFTP through asyncssh, key authentication with
  ``client_key`` and host keys checked against ``known_hosts`` (asyncssh's defaults,
  ``~/.ssh/id_*`` and ``~/.ssh/known_hosts``, when not given). Host keys are always checked.

Writes are atomic everywhere: an answer is uploaded to a hidden temporary name
(``.<name>.<random>.part``) in the outbox and renamed to its final name only when complete, so
a partner never sees a partial file under a final name; a fetched file appears under
``local_path`` only when complete. Listing skips hidden names and anything not a regular file.
Failures of the other side (connection, permission, missing directory) are raised as
``TransportError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Protocol, TypeVar
from urllib.parse import unquote, urlsplit

import asyncssh

from incentive.points_files.errors import TransportError

_T = TypeVar("_T")
# File-level refusals leave the SSH connection usable; anything else drops it.
_FILE_LEVEL_ERRORS = (
    asyncssh.SFTPNoSuchFile,
    asyncssh.SFTPPermissionDenied,
    asyncssh.SFTPFailure,
    asyncssh.SFTPFileAlreadyExists,
    asyncssh.SFTPOpUnsupported,
    asyncssh.SFTPNoSuchPath,
)


@dataclass(frozen=True, slots=True)
class TransportOptions:
    inbox_dir: str = "inbox"
    outbox_dir: str = "outbox"
    archive_dir: str | None = "archive"
    client_key: Path | None = None
    known_hosts: Path | None = None
    connect_timeout_s: float = 30.0

    @classmethod
    def for_partner(
        cls, key_file: str | None, known_hosts: str | None, *, archive: str | None
    ) -> TransportOptions:
        """A partner's inbox and outbox URLs each name the directory itself (``inbox_dir`` and
        ``outbox_dir`` are ``.``); ``key_file``/``known_hosts`` from its settings."""
        return cls(
            inbox_dir=".",
            outbox_dir=".",
            archive_dir=archive,
            client_key=Path(key_file) if key_file else None,
            known_hosts=Path(known_hosts) if known_hosts else None,
        )


class Transport(Protocol):
    async def list_inbox(self) -> list[str]:
        """Names of the regular, non-hidden files in the inbox, sorted."""
        ...

    async def fetch(self, name: str, local_path: Path) -> None:
        """Copy inbox ``name`` to ``local_path`` (complete or absent)."""
        ...

    async def remove_from_inbox(self, name: str) -> None:
        """Take ``name`` out of the inbox: move it to the archive, or delete it if none."""
        ...

    async def deliver(self, local_path: Path, name: str) -> None:
        """Put ``local_path`` into the outbox as ``name``: temporary name, then rename."""
        ...

    async def aclose(self) -> None: ...


def check_name(name: str) -> str:
    """A plain file name: no directories, not hidden, no traversal."""
    if (
        not name
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or len(name.encode()) > 255
    ):
        raise ValueError(f"not a plain file name: {name!r}")
    return name


def _temp_name(name: str) -> str:
    return f".{name}.{uuid.uuid4().hex}.part"


def _archive_variant(name: str) -> str:
    return f"{name}.{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"


def _replace_locally(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    with contextlib.suppress(OSError):  # directory fsync is not possible everywhere
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _copy_durably(src: Path, dst: Path) -> None:
    with src.open("rb") as fin, dst.open("wb") as fout:
        shutil.copyfileobj(fin, fout, 1024 * 1024)
        fout.flush()
        os.fsync(fout.fileno())


# ---------------------------------------------------------------------------------------------
# Local directory


class LocalDirTransport:
    def __init__(self, root: Path, options: TransportOptions = TransportOptions()) -> None:
        self.root = root
        self.inbox = root / options.inbox_dir
        self.outbox = root / options.outbox_dir
        self.archive = root / options.archive_dir if options.archive_dir else None

    async def list_inbox(self) -> list[str]:
        return await self._run(self._list)

    def _list(self) -> list[str]:
        self.inbox.mkdir(parents=True, exist_ok=True)
        with os.scandir(self.inbox) as entries:
            return sorted(
                e.name
                for e in entries
                if not e.name.startswith(".") and e.is_file(follow_symlinks=False)
            )

    async def fetch(self, name: str, local_path: Path) -> None:
        source = self.inbox / check_name(name)

        def copy() -> None:
            tmp = local_path.with_name(_temp_name(local_path.name))
            try:
                _copy_durably(source, tmp)
                _replace_locally(tmp, local_path)
            finally:
                tmp.unlink(missing_ok=True)

        await self._run(copy)

    async def remove_from_inbox(self, name: str) -> None:
        source = self.inbox / check_name(name)

        def remove() -> None:
            if self.archive is None:
                source.unlink()
                return
            self.archive.mkdir(parents=True, exist_ok=True)
            target = self.archive / name
            if target.exists():
                target = self.archive / _archive_variant(name)
            _replace_locally(source, target)

        await self._run(remove)

    async def deliver(self, local_path: Path, name: str) -> None:
        final = self.outbox / check_name(name)

        def put() -> None:
            self.outbox.mkdir(parents=True, exist_ok=True)
            tmp = self.outbox / _temp_name(name)
            try:
                _copy_durably(local_path, tmp)
                _replace_locally(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)

        await self._run(put)

    async def aclose(self) -> None:
        return None

    @staticmethod
    async def _run(func: Callable[[], _T]) -> _T:
        try:
            return await asyncio.to_thread(func)
        except OSError as exc:
            raise TransportError(f"local transport: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# SFTP


class SftpTransport:
    """SFTP client over one lazily opened SSH connection (reopened after a failure)."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None,
        root: str,
        options: TransportOptions = TransportOptions(),
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.options = options
        base = PurePosixPath(root or ".")
        self.inbox = str(base / options.inbox_dir)
        self.outbox = str(base / options.outbox_dir)
        self.archive = str(base / options.archive_dir) if options.archive_dir else None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock = asyncio.Lock()

    async def _client(self) -> asyncssh.SFTPClient:
        async with self._lock:
            if self._sftp is None:
                kwargs: dict[str, object] = {
                    "port": self.port,
                    "connect_timeout": self.options.connect_timeout_s,
                }
                if self.username:
                    kwargs["username"] = self.username
                if self.options.client_key is not None:
                    kwargs["client_keys"] = [str(self.options.client_key)]
                if self.options.known_hosts is not None:
                    kwargs["known_hosts"] = str(self.options.known_hosts)
                conn = await asyncssh.connect(self.host, **kwargs)
                try:
                    self._sftp = await conn.start_sftp_client()
                except BaseException:
                    conn.close()
                    raise
                self._conn = conn
            return self._sftp

    @contextlib.asynccontextmanager
    async def _session(self, what: str) -> AsyncIterator[asyncssh.SFTPClient]:
        try:
            yield await self._client()
        except (OSError, asyncssh.Error) as exc:
            if not isinstance(exc, _FILE_LEVEL_ERRORS):
                await self.aclose()  # the connection is suspect: reconnect next time
            raise TransportError(f"sftp {self.host}:{self.port} {what}: {exc}") from exc

    async def list_inbox(self) -> list[str]:
        async with self._session("list inbox") as sftp:
            entries = await sftp.readdir(self.inbox)
        return sorted(
            str(e.filename)
            for e in entries
            if not str(e.filename).startswith(".")
            and e.attrs.type == asyncssh.FILEXFER_TYPE_REGULAR
        )

    async def fetch(self, name: str, local_path: Path) -> None:
        remote = f"{self.inbox}/{check_name(name)}"
        tmp = local_path.with_name(_temp_name(local_path.name))
        try:
            async with self._session(f"fetch {name}") as sftp:
                await sftp.get(remote, tmp)
            await asyncio.to_thread(_replace_locally, tmp, local_path)
        finally:
            tmp.unlink(missing_ok=True)

    async def remove_from_inbox(self, name: str) -> None:
        source = f"{self.inbox}/{check_name(name)}"
        async with self._session(f"remove {name}") as sftp:
            if self.archive is None:
                await sftp.remove(source)
                return
            await sftp.makedirs(self.archive, exist_ok=True)
            target = f"{self.archive}/{name}"
            if await sftp.exists(target):
                target = f"{self.archive}/{_archive_variant(name)}"
            await self._rename(sftp, source, target)

    async def deliver(self, local_path: Path, name: str) -> None:
        final = f"{self.outbox}/{check_name(name)}"
        tmp = f"{self.outbox}/{_temp_name(name)}"
        async with self._session(f"deliver {name}") as sftp:
            await sftp.makedirs(self.outbox, exist_ok=True)
            try:
                await sftp.put(local_path, tmp)
                await self._rename(sftp, tmp, final)
            except BaseException:
                with contextlib.suppress(OSError, asyncssh.Error):
                    await sftp.remove(tmp)
                raise

    @staticmethod
    async def _rename(sftp: asyncssh.SFTPClient, source: str, target: str) -> None:
        try:
            await sftp.posix_rename(source, target)  # atomic, replaces an existing target
        except asyncssh.SFTPOpUnsupported:
            # Plain SFTP v3 rename refuses an existing target; a redelivery replaces it.
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await sftp.remove(target)
            await sftp.rename(source, target)

    async def aclose(self) -> None:
        sftp, conn = self._sftp, self._conn
        self._sftp = self._conn = None
        if sftp is not None:
            sftp.exit()
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await conn.wait_closed()


# ---------------------------------------------------------------------------------------------


def open_transport(url: str, options: TransportOptions = TransportOptions()) -> Transport:
    """The backend for ``file://`` or ``sftp://`` URLs (no connection is made yet)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError("file URLs name a local path: file:///path")
        return LocalDirTransport(Path(unquote(parts.path)), options)
    if parts.scheme == "sftp":
        if not parts.hostname:
            raise ValueError("sftp URLs need a host: sftp://user@host:port/path")
        return SftpTransport(
            parts.hostname,
            parts.port or 22,
            unquote(parts.username) if parts.username else None,
            unquote(parts.path),
            options,
        )
    raise ValueError(f"unsupported transport URL scheme {parts.scheme!r} (file, sftp)")


@contextlib.asynccontextmanager
async def connected(
    url: str, options: TransportOptions = TransportOptions()
) -> AsyncIterator[Transport]:
    """``open_transport`` that closes the connection when the block ends."""
    transport = open_transport(url, options)
    try:
        yield transport
    finally:
        await transport.aclose()
