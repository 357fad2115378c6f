"""Fixtures of the points-file pipeline tests (helpers live in ``kit.py``)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from incentive.points_files.crypto import PointsCrypto
from incentive.settings import Settings
from tests.points_files.kit import Pgp, install_platform_key, pgp_world, stop_agents


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
