"""Where a points file's bytes live on this node, under ``<data_dir>/points_files/``.

- ``inbound/<id>.pgp``: the file as the partner sent it (encrypted and signed), written
  durably before the file's row is committed.
- ``work/<id>.txt`` and ``work/<id>.answer.txt``: the decrypted file while it is staged, and an
  answer while it is written; both are deleted once their stage commits.
- ``outbound/<id>/<answer name>``: the encrypted feedback or exception file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from incentive.points_files.errors import StorageFull
from incentive.settings import Settings


def work_root(settings: Settings) -> Path:
    return settings.data_dir / "points_files"


def inbound_path(settings: Settings, file_id: str) -> Path:
    return work_root(settings) / "inbound" / f"{file_id}.pgp"


def plain_path(settings: Settings, file_id: str) -> Path:
    return work_root(settings) / "work" / f"{file_id}.txt"


def answer_plain_path(settings: Settings, file_id: str) -> Path:
    return work_root(settings) / "work" / f"{file_id}.answer.txt"


def answer_path(settings: Settings, file_id: str, answer_name: str) -> Path:
    return work_root(settings) / "outbound" / file_id / answer_name


def ensure_free_space(settings: Settings) -> None:
    """Refuse points-file work (``StorageFull``) while the data directory's disk has less free
    space than ``settings.points_min_free_bytes``."""
    root = work_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < settings.points_min_free_bytes:
        raise StorageFull(
            f"only {free} bytes free under the data directory, "
            f"{settings.points_min_free_bytes} required (INCENTIVE_POINTS_MIN_FREE_BYTES)"
        )


@dataclass(frozen=True)
class StoredBytes:
    path: Path
    size: int
    sha256: str
    truncated: bool


async def store_stream(chunks: AsyncIterator[bytes], target: Path, max_bytes: int) -> StoredBytes:
    """Write ``chunks`` to ``target`` durably (fsync, then rename); stop after ``max_bytes``+1."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    size = 0
    truncated = False
    try:
        with partial.open("wb") as out:
            async for chunk in chunks:
                if size + len(chunk) > max_bytes:
                    truncated = True
                    break
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(f"the data directory's disk is full: {exc}") from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return StoredBytes(target, size, digest.hexdigest(), truncated)


async def file_chunks(path: Path, size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()
