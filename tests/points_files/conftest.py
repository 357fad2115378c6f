"""Fixtures of the points-file pipeline tests (helpers live in ``kit.py``)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncssh
import pytest

from incentive.points_files.backends.transports import TransportOptions
from incentive.points_files.crypto import PointsCrypto
from incentive.settings import Settings
from tests.points_files.kit import (
    Pgp,
    ServerLog,
    SftpWorld,
    install_platform_key,
    pgp_world,
    sftp_factory,
    stop_agents,
)


@pytest.fixture(scope="session")
def pgp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pgp]:
    yield from pgp_world(tmp_path_factory.mktemp("points_pgp"))


@pytest.fixture
def quiet_settings(settings: Settings) -> Iterator[Settings]:
    # The test drives its own pipeline; no embedded worker competing for the files. The data
    # directory is short: gpg-agent's sockets live in GNUPGHOME and a Unix socket path has
    # at most 107 bytes, which pytest's long per-test directories can exceed.
    short = Path(tempfile.mkdtemp(prefix="pf-", dir="/tmp"))
    yield settings.model_copy(
        update={"embedded_worker": False, "points_lease_seconds": 5.0, "data_dir": short}
    )
    shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def crypto(pgp: Pgp, quiet_settings: Settings) -> Iterator[PointsCrypto]:
    c = install_platform_key(pgp, quiet_settings)
    yield c
    stop_agents(quiet_settings)


@pytest.fixture
async def sftp_world(tmp_path: Path) -> AsyncIterator[SftpWorld]:
    """A partner's SFTP server (asyncssh, real protocol) on loopback; its ``acme`` home holds
    ``inbox``; we log in as ``points`` with an ed25519 key it trusts."""
    root = tmp_path / "sftp-root"
    (root / "acme" / "inbox").mkdir(parents=True)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "id_ed25519"
    client_key.write_private_key(str(key_file))
    log = ServerLog()
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(
            client_key.export_public_key().decode()
        ),
        sftp_factory=sftp_factory(root, log),
        allow_scp=False,
    )
    port = server.sockets[0].getsockname()[1]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_bytes(f"[127.0.0.1]:{port} ".encode() + host_key.export_public_key())
    options = TransportOptions(client_key=key_file, known_hosts=known_hosts)
    yield SftpWorld(f"sftp://points@127.0.0.1:{port}/acme", root / "acme", options, log, port)
    server.close()
    await server.wait_closed()
