"""Transports against a real local directory and a real asyncssh SFTP server on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import asyncssh
import pytest

from incentive.points_files.backends.transports import (
    LocalDirTransport,
    SftpTransport,
    Transport,
    TransportOptions,
    check_name,
    connected,
    open_transport,
)
from incentive.points_files.errors import TransportError
from tests.points_files.kit import SftpWorld
from tests.servers import free_port

NAME = "POINTS_ACME_20250109_1.txt.pgp"


@pytest.fixture
def local_root(tmp_path: Path) -> Path:
    root = tmp_path / "partners" / "acme"
    (root / "inbox").mkdir(parents=True)
    return root


async def _exercise(transport: Transport, root: Path, tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    (root / "inbox" / NAME).write_bytes(payload)
    (root / "inbox" / ".partner-uploading.part").write_bytes(b"x")
    (root / "inbox" / "subdir").mkdir()
    assert await transport.list_inbox() == [NAME]

    local = tmp_path / "fetched.pgp"
    await transport.fetch(NAME, local)
    assert local.read_bytes() == payload
    assert [n for n in os.listdir(tmp_path) if n.endswith(".part")] == []

    await transport.remove_from_inbox(NAME)
    assert await transport.list_inbox() == []
    assert (root / "archive" / NAME).read_bytes() == payload
    # the same name again (a partner resending) does not overwrite the archived copy
    (root / "inbox" / NAME).write_bytes(b"second")
    await transport.remove_from_inbox(NAME)
    archived = sorted(p.name for p in (root / "archive").iterdir())
    assert len(archived) == 2
    assert archived[0] == NAME

    answer = tmp_path / "answer.pgp"
    answer.write_bytes(b"feedback v1")
    await transport.deliver(answer, "FEEDBACK_POINTS_ACME_20250109_1.txt.pgp")
    answer.write_bytes(b"feedback v2")
    await transport.deliver(answer, "FEEDBACK_POINTS_ACME_20250109_1.txt.pgp")
    assert sorted(p.name for p in (root / "outbox").iterdir()) == [
        "FEEDBACK_POINTS_ACME_20250109_1.txt.pgp"
    ]
    assert (root / "outbox" / "FEEDBACK_POINTS_ACME_20250109_1.txt.pgp").read_bytes() == (
        b"feedback v2"
    )

    with pytest.raises(TransportError):
        await transport.fetch("POINTS_NOPE_20250109_1.txt.pgp", tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
    for bad in ["../etc/passwd", ".hidden", "a/b", ""]:
        with pytest.raises(ValueError, match="plain file name"):
            await transport.fetch(bad, tmp_path / "x")


async def test_local_directory(local_root: Path, tmp_path: Path) -> None:
    async with connected(local_root.as_uri()) as transport:
        assert isinstance(transport, LocalDirTransport)
        await _exercise(transport, local_root, tmp_path)


async def test_local_directory_without_archive_deletes(local_root: Path, tmp_path: Path) -> None:
    transport = open_transport(local_root.as_uri(), TransportOptions(archive_dir=None))
    (local_root / "inbox" / NAME).write_bytes(b"x")
    await transport.remove_from_inbox(NAME)
    assert not (local_root / "inbox" / NAME).exists()
    assert not (local_root / "archive").exists()


async def test_sftp(sftp_world: SftpWorld, tmp_path: Path) -> None:
    async with connected(sftp_world.url, sftp_world.options) as transport:
        assert isinstance(transport, SftpTransport)
        await _exercise(transport, sftp_world.root, tmp_path)
    # answers were written under temporary names only, then renamed
    assert "FEEDBACK_POINTS_ACME_20250109_1.txt.pgp" not in sftp_world.log.opened_for_write
    assert all(n.startswith(".") and n.endswith(".part") for n in sftp_world.log.opened_for_write)


async def test_sftp_partial_upload_never_visible(sftp_world: SftpWorld, tmp_path: Path) -> None:
    big = tmp_path / "big.pgp"
    big.write_bytes(os.urandom(4_000_000))
    final = sftp_world.root / "outbox" / "FEEDBACK_POINTS_ACME_20250109_2.txt.pgp"
    seen_sizes: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            if final.exists():
                seen_sizes.append(final.stat().st_size)
            await asyncio.sleep(0)

    async with connected(sftp_world.url, sftp_world.options) as transport:
        watcher = asyncio.create_task(watch())
        try:
            await transport.deliver(big, final.name)
        finally:
            done.set()
            await watcher
    assert final.read_bytes() == big.read_bytes()
    assert set(seen_sizes) <= {big.stat().st_size}


async def test_sftp_failed_upload_leaves_nothing(sftp_world: SftpWorld, tmp_path: Path) -> None:
    big = tmp_path / "big.pgp"
    big.write_bytes(os.urandom(1_000_000))
    sftp_world.log.fail_writes_after = 200_000
    async with connected(sftp_world.url, sftp_world.options) as transport:
        with pytest.raises(TransportError, match="disk full"):
            await transport.deliver(big, "FEEDBACK_POINTS_ACME_20250109_3.txt.pgp")
        sftp_world.log.fail_writes_after = None
        # same connection still works afterwards
        assert await transport.list_inbox() == []
    outbox = sftp_world.root / "outbox"
    assert list(outbox.iterdir()) == []


async def test_sftp_unknown_host_key_is_refused(sftp_world: SftpWorld, tmp_path: Path) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519")
    known = tmp_path / "other_known_hosts"
    known.write_bytes(f"[127.0.0.1]:{sftp_world.port} ".encode() + other.export_public_key())
    options = TransportOptions(
        client_key=sftp_world.options.client_key, known_hosts=known, connect_timeout_s=5
    )
    async with connected(sftp_world.url, options) as transport:
        with pytest.raises(TransportError):
            await transport.list_inbox()


async def test_sftp_wrong_client_key_is_refused(sftp_world: SftpWorld, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(stranger))
    options = TransportOptions(
        client_key=stranger, known_hosts=sftp_world.options.known_hosts, connect_timeout_s=5
    )
    async with connected(sftp_world.url, options) as transport:
        with pytest.raises(TransportError):
            await transport.list_inbox()


async def test_sftp_reconnects_after_connection_drop(sftp_world: SftpWorld) -> None:
    """Our side's connection closes under the transport: the next call fails, the one after
    reconnects."""
    transport = open_transport(sftp_world.url, sftp_world.options)
    assert await transport.list_inbox() == []
    assert isinstance(transport, SftpTransport)
    assert transport._conn is not None
    transport._conn.close()
    await transport._conn.wait_closed()
    with pytest.raises(TransportError):
        await transport.list_inbox()
    (sftp_world.root / "inbox" / NAME).write_bytes(b"x")
    assert await transport.list_inbox() == [NAME]
    await transport.aclose()


async def _start_sftp_process(
    root: Path, port: int, host_key: Path, client_public: Path
) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.points_files.backends.sftp_server",
        str(root),
        str(port),
        str(host_key),
        str(client_public),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), timeout=30) == b"ready\n"
    return proc


async def test_sftp_reconnects_after_the_server_process_is_killed(tmp_path: Path) -> None:
    """A real outage: the partner's SFTP server process is killed (SIGKILL) while we hold a
    connection, calls fail with TransportError (not hang, not crash), and once the server is
    back on the same port the same transport reconnects by itself."""
    root = tmp_path / "sftp-root"
    (root / "inbox").mkdir(parents=True)
    host_key, client_key = tmp_path / "host_key", tmp_path / "id_ed25519"
    host = asyncssh.generate_private_key("ssh-ed25519")
    host.write_private_key(str(host_key))
    client = asyncssh.generate_private_key("ssh-ed25519")
    client.write_private_key(str(client_key))
    client_public = tmp_path / "id_ed25519.pub"
    client.write_public_key(str(client_public))
    port = free_port()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_bytes(f"[127.0.0.1]:{port} ".encode() + host.export_public_key())
    options = TransportOptions(client_key=client_key, known_hosts=known_hosts, connect_timeout_s=5)
    server = await _start_sftp_process(root, port, host_key, client_public)
    transport = open_transport(f"sftp://points@127.0.0.1:{port}/", options)
    try:
        assert await transport.list_inbox() == []
        server.send_signal(signal.SIGKILL)
        assert await server.wait() == -signal.SIGKILL
        for _ in range(2):  # the dropped connection, then a refused reconnect
            with pytest.raises(TransportError):
                await asyncio.wait_for(transport.list_inbox(), timeout=30)
        server = await _start_sftp_process(root, port, host_key, client_public)
        (root / "inbox" / NAME).write_bytes(b"x")
        assert await transport.list_inbox() == [NAME]
    finally:
        await transport.aclose()
        if server.returncode is None:
            server.kill()
            await server.wait()


def test_urls() -> None:
    sftp = open_transport("sftp://bank%40x@files.example:2222/srv/acme")
    assert isinstance(sftp, SftpTransport)
    assert (sftp.host, sftp.port, sftp.username) == ("files.example", 2222, "bank@x")
    assert (sftp.inbox, sftp.outbox, sftp.archive) == (
        "/srv/acme/inbox",
        "/srv/acme/outbox",
        "/srv/acme/archive",
    )
    local = open_transport("file:///srv/partners/acme")
    assert isinstance(local, LocalDirTransport)
    assert local.inbox == Path("/srv/partners/acme/inbox")
    for bad in ["http://x/y", "file://remote/x", "sftp:///nohost"]:
        with pytest.raises(ValueError):  # noqa: PT011
            open_transport(bad)
    assert check_name(NAME) == NAME
