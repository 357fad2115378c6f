"""OpenPGP with the real gpg: the partner is the gpg CLI in its own GNUPGHOME."""

from __future__ import annotations

import contextlib
import resource
import subprocess
import threading
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from incentive.points_files.crypto import PointsCrypto, init_platform_key, normalize_fingerprint
from incentive.points_files.errors import FileRejected, PartnerKeyInvalid, PointsCryptoError
from incentive.points_files.format import RejectReason

PLAIN = (
    b"H|ACME|1|2025-01-09T18:49:00+08:00|1\nD|r1|alice|100|2025-01-09T10:00:00+08:00|x\nT|1|100\n"
)


def _kill_agent(home: Path) -> None:
    subprocess.run(
        ["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True
    )


@dataclass
class GpgCli:
    """A partner (or a stranger) using the plain gpg command line."""

    home: Path
    fingerprint: str = ""

    def run(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [
                "gpg",
                "--homedir",
                str(self.home),
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--trust-model",
                "always",
                *args,
            ],
            input=stdin,
            capture_output=True,
            check=False,
        )

    @classmethod
    def create(cls, home: Path, uid: str) -> GpgCli:
        home.mkdir(mode=0o700)
        cli = cls(home)
        done = cli.run("--quick-gen-key", uid, "future-default", "default", "never")
        assert done.returncode == 0, done.stderr
        listed = cli.run("--with-colons", "--list-secret-keys")
        fprs = [
            line.split(":")[9] for line in listed.stdout.decode().splitlines() if line[:4] == "fpr:"
        ]
        cli.fingerprint = fprs[0]
        return cli

    def public_key(self) -> str:
        return self.run("--armor", "--export", self.fingerprint).stdout.decode()

    def import_key(self, armoured: str) -> None:
        assert self.run("--import", stdin=armoured.encode()).returncode == 0

    def encrypt(
        self, plain: Path, out: Path, recipient: str, *, sign: bool = True, armor: bool = False
    ) -> None:
        args = ["--output", str(out), "--encrypt", "--recipient", recipient]
        if sign:
            args += ["--sign", "--local-user", self.fingerprint]
        if armor:
            args.append("--armor")
        done = self.run(*args, str(plain))
        assert done.returncode == 0, done.stderr


@dataclass
class World:
    platform: PointsCrypto
    partner: GpgCli
    partner_fpr: str
    stranger: GpgCli
    known_stranger: GpgCli
    tmp: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("pgp")
    platform = init_platform_key(root / "plat", "Incentive", "points@incentive.test")
    partner = GpgCli.create(root / "partner", "Acme Bank <files@acme.test>")
    stranger = GpgCli.create(root / "stranger", "Stranger <x@evil.test>")
    known_stranger = GpgCli.create(root / "known", "Other Partner <files@other.test>")
    partner_fpr = platform.import_partner_key(partner.public_key())
    platform.import_partner_key(known_stranger.public_key())
    ours = platform.export_public_key()
    for cli in (partner, stranger, known_stranger):
        cli.import_key(ours)
    partner.import_key(stranger.public_key())
    yield World(platform, partner, partner_fpr, stranger, known_stranger, root)
    for home in (root / "plat", root / "partner", root / "stranger", root / "known"):
        _kill_agent(home)


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    path = tmp_path / "plain.txt"
    path.write_bytes(PLAIN)
    return path


def test_platform_key_is_created_once(world: World) -> None:
    again = init_platform_key(world.platform.home, "Incentive", "points@incentive.test")
    assert again.platform_fingerprint == world.platform.platform_fingerprint
    assert "BEGIN PGP PUBLIC KEY BLOCK" in again.export_public_key()
    assert oct(world.platform.home.stat().st_mode & 0o777) == "0o700"


def test_import_partner_key_returns_its_fingerprint(world: World) -> None:
    assert world.partner_fpr == normalize_fingerprint(world.partner.fingerprint)


@pytest.mark.parametrize(
    "armoured", ["", "not a key", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END"]
)
def test_import_rejects_non_keys(world: World, armoured: str) -> None:
    before = _keyring(world)
    with pytest.raises(PartnerKeyInvalid):
        world.platform.import_partner_key(armoured)
    assert _keyring(world) == before


def _keyring(world: World) -> set[str]:
    """Every fingerprint (keys and subkeys, public and secret) in the platform keyring."""
    found: set[str] = set()
    for what in ("--list-keys", "--list-secret-keys"):
        listed = subprocess.run(
            ["gpg", "--homedir", str(world.platform.home), "--batch", "--with-colons", what],
            capture_output=True,
            check=True,
        )
        found |= {
            f"{what}:{line.split(':')[9]}"
            for line in listed.stdout.decode().splitlines()
            if line.startswith("fpr:")
        }
    return found


def test_import_rejects_two_keys_at_once(world: World) -> None:
    """Refused, and nothing of the two keys was imported (the stranger's key in particular)."""
    before = _keyring(world)
    assert not any(world.stranger.fingerprint in f for f in before)
    both = world.partner.public_key() + world.stranger.public_key()
    with pytest.raises(PartnerKeyInvalid):
        world.platform.import_partner_key(both)
    assert _keyring(world) == before


def test_import_rejects_secret_key(world: World) -> None:
    secret = world.stranger.run("--armor", "--export-secret-keys", world.stranger.fingerprint)
    with pytest.raises(PartnerKeyInvalid):
        world.platform.import_partner_key(secret.stdout.decode())
    listed = subprocess.run(
        ["gpg", "--homedir", str(world.platform.home), "--batch", "--list-secret-keys"],
        capture_output=True,
        check=True,
    )
    assert world.stranger.fingerprint.encode() not in listed.stdout


def test_import_rejects_platform_own_key(world: World) -> None:
    with pytest.raises(PartnerKeyInvalid):
        world.platform.import_partner_key(world.platform.export_public_key())


@pytest.mark.parametrize("armor", [False, True])
def test_partner_file_decrypts_and_verifies(
    world: World, plain: Path, tmp_path: Path, armor: bool
) -> None:
    enc = tmp_path / "in.pgp"
    world.partner.encrypt(plain, enc, world.platform.platform_fingerprint, armor=armor)
    out = tmp_path / "out.txt"
    verified = world.platform.decrypt_and_verify(enc, out, world.partner_fpr)
    assert out.read_bytes() == PLAIN
    assert verified.signer_fingerprint == world.partner_fpr


def _assert_rejected(
    world: World, enc: Path, tmp_path: Path, reason: RejectReason, fpr: str | None = None
) -> None:
    out = tmp_path / "out.txt"
    with pytest.raises(FileRejected) as caught:
        world.platform.decrypt_and_verify(enc, out, fpr or world.partner_fpr)
    assert caught.value.reason_code is reason
    assert not out.exists()
    assert not list(tmp_path.glob("*.partial"))


def test_unsigned_file_is_bad_signature(world: World, plain: Path, tmp_path: Path) -> None:
    enc = tmp_path / "in.pgp"
    world.partner.encrypt(plain, enc, world.platform.platform_fingerprint, sign=False)
    _assert_rejected(world, enc, tmp_path, RejectReason.BAD_SIGNATURE)


def test_signed_by_unknown_key_is_bad_signature(world: World, plain: Path, tmp_path: Path) -> None:
    enc = tmp_path / "in.pgp"
    world.stranger.encrypt(plain, enc, world.platform.platform_fingerprint)
    _assert_rejected(world, enc, tmp_path, RejectReason.BAD_SIGNATURE)


def test_signed_by_another_registered_partner_is_bad_signature(
    world: World, plain: Path, tmp_path: Path
) -> None:
    enc = tmp_path / "in.pgp"
    world.known_stranger.encrypt(plain, enc, world.platform.platform_fingerprint)
    _assert_rejected(world, enc, tmp_path, RejectReason.BAD_SIGNATURE)
    # the same file is fine for the partner whose key signed it
    out = tmp_path / "ok.txt"
    world.platform.decrypt_and_verify(enc, out, world.known_stranger.fingerprint)
    assert out.read_bytes() == PLAIN


@pytest.mark.parametrize(
    "garbage",
    [b"", b"hello, not pgp\n" * 100, bytes(range(256)) * 64, b"-----BEGIN PGP MESSAGE-----\n\n"],
)
def test_garbage_is_decrypt_failed(world: World, tmp_path: Path, garbage: bytes) -> None:
    enc = tmp_path / "in.pgp"
    enc.write_bytes(garbage)
    _assert_rejected(world, enc, tmp_path, RejectReason.DECRYPT_FAILED)


def test_plaintext_points_file_is_decrypt_failed(world: World, plain: Path, tmp_path: Path) -> None:
    _assert_rejected(world, plain, tmp_path, RejectReason.DECRYPT_FAILED)


def test_signed_but_not_encrypted_is_decrypt_failed(
    world: World, plain: Path, tmp_path: Path
) -> None:
    enc = tmp_path / "in.pgp"
    done = world.partner.run("--output", str(enc), "--sign", str(plain))
    assert done.returncode == 0
    _assert_rejected(world, enc, tmp_path, RejectReason.DECRYPT_FAILED)


def test_encrypted_to_another_key_is_decrypt_failed(
    world: World, plain: Path, tmp_path: Path
) -> None:
    enc = tmp_path / "in.pgp"
    world.partner.encrypt(plain, enc, world.stranger.fingerprint)
    _assert_rejected(world, enc, tmp_path, RejectReason.DECRYPT_FAILED)


def test_tampered_message_is_decrypt_failed(world: World, plain: Path, tmp_path: Path) -> None:
    enc = tmp_path / "in.pgp"
    world.partner.encrypt(plain, enc, world.platform.platform_fingerprint)
    data = bytearray(enc.read_bytes())
    data[len(data) // 2 + 20] ^= 0xFF
    enc.write_bytes(bytes(data))
    _assert_rejected(world, enc, tmp_path, RejectReason.DECRYPT_FAILED)


def test_truncated_message_is_decrypt_failed(world: World, plain: Path, tmp_path: Path) -> None:
    enc = tmp_path / "in.pgp"
    world.partner.encrypt(plain, enc, world.platform.platform_fingerprint)
    enc.write_bytes(enc.read_bytes()[:-30])
    _assert_rejected(world, enc, tmp_path, RejectReason.DECRYPT_FAILED)


@pytest.mark.parametrize("armor", [False, True])
def test_feedback_reaches_partner_signed_by_platform(
    world: World, plain: Path, tmp_path: Path, armor: bool
) -> None:
    enc = tmp_path / "FEEDBACK.txt.pgp"
    world.platform.encrypt_and_sign(plain, enc, world.partner_fpr, armor=armor)
    assert enc.read_bytes().startswith(b"-----BEGIN PGP MESSAGE-----") is armor
    out = tmp_path / "partner-sees.txt"
    done = world.partner.run("--status-fd", "1", "--output", str(out), "--decrypt", str(enc))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == PLAIN
    status = done.stdout.decode()
    assert "[GNUPG:] GOODSIG" in status
    assert f"[GNUPG:] VALIDSIG {world.platform.platform_fingerprint}" in status


def test_encrypt_to_unknown_key_fails_and_writes_nothing(
    world: World, plain: Path, tmp_path: Path
) -> None:
    out = tmp_path / "x.pgp"
    with pytest.raises(PointsCryptoError):
        world.platform.encrypt_and_sign(plain, out, "A" * 40)
    assert not out.exists()


def test_large_file_streams_without_holding_it(world: World, tmp_path: Path) -> None:
    line = b"D|r0000000|member-000000|100|2025-01-09T10:00:00+08:00|" + b"m" * 60 + b"\n"
    big = tmp_path / "big.txt"
    with big.open("wb") as f:
        for _ in range(120_000):  # about 14 MB
            f.write(line)
    enc = tmp_path / "big.pgp"
    world.partner.encrypt(big, enc, world.platform.platform_fingerprint)
    out = tmp_path / "big.out"
    tracemalloc.start()
    try:
        world.platform.decrypt_and_verify(enc, out, world.partner_fpr)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.stat().st_size == big.stat().st_size
    assert peak < 2_000_000
    back = tmp_path / "back.pgp"
    world.platform.encrypt_and_sign(out, back, world.partner_fpr)
    assert back.stat().st_size > 0


def test_keyring_without_pin_adopts_its_key(world: World) -> None:
    pin = world.platform.home / "platform-fingerprint"
    saved = pin.read_text()
    pin.unlink()
    try:
        again = init_platform_key(world.platform.home, "Incentive", "points@incentive.test")
        assert again.platform_fingerprint == world.platform.platform_fingerprint
    finally:
        pin.write_text(saved)


def test_passphrase_protected_platform_key(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("pp")
    secret = root / "passphrase"
    secret.write_text("correct horse battery staple\n")
    home = root / "plat"
    platform = init_platform_key(home, "Incentive", "p@i.test", passphrase_file=secret)
    partner = GpgCli.create(root / "partner", "P <p@p.test>")
    try:
        partner_fpr = platform.import_partner_key(partner.public_key())
        partner.import_key(platform.export_public_key())
        plain = root / "plain.txt"
        plain.write_bytes(PLAIN)
        enc = root / "in.pgp"
        partner.encrypt(plain, enc, platform.platform_fingerprint)
        platform.decrypt_and_verify(enc, root / "out.txt", partner_fpr)
        assert (root / "out.txt").read_bytes() == PLAIN
        platform.encrypt_and_sign(plain, root / "fb.pgp", partner_fpr)
        # without the passphrase (and once the agent forgot it) the secret key is unusable
        _kill_agent(home)
        locked = PointsCrypto(home, passphrase_file=None)
        with pytest.raises(FileRejected) as caught:
            locked.decrypt_and_verify(enc, root / "out2.txt", partner_fpr)
        assert caught.value.reason_code is RejectReason.DECRYPT_FAILED
    finally:
        _kill_agent(home)
        _kill_agent(root / "partner")


# ------------------------------------------------------------------ compression bombs


def _bomb(world: World, tmp_path: Path, plain_mb: int, *, sign: bool) -> Path:
    """A few KB of OpenPGP (bzip2 level 9) that inflate to ``plain_mb`` MB of zeros."""
    zeros = tmp_path / "zeros"
    with zeros.open("wb") as f:
        f.truncate(plain_mb * 1024 * 1024)  # sparse: nothing on disk
    enc = tmp_path / "bomb.pgp"
    args = ["--compress-algo", "bzip2", "-z", "9", "--output", str(enc), "--encrypt"]
    args += ["--recipient", world.platform.platform_fingerprint]
    if sign:
        args += ["--sign", "--local-user", world.partner.fingerprint]
    done = world.partner.run(*args, str(zeros))
    assert done.returncode == 0, done.stderr
    zeros.unlink()
    assert enc.stat().st_size < 200_000
    return enc


def _gpg_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _decrypting_gpgs(home: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--decrypt" in cmdline and str(home).encode() in cmdline:
            found.append(proc.name)
    return found


@pytest.mark.parametrize("sign", [True, False], ids=["signed", "unsigned"])
def test_compression_bomb_is_stopped_at_the_plain_limit(
    world: World, tmp_path: Path, sign: bool
) -> None:
    """Issue 10 item 1: the decrypted size is bounded while streaming; gpg is stopped, the
    partial plain text deleted, the answer TOO_LARGE (before BAD_SIGNATURE for an unsigned
    bomb), and the bytes on disk never pass the limit."""
    enc = _bomb(world, tmp_path, 96, sign=sign)
    limit = 1024 * 1024
    work = tmp_path / "work"
    work.mkdir()
    out = work / "plain.txt"
    peak = 0
    running = True

    def watch() -> None:
        nonlocal peak
        while running:
            size = 0
            for p in work.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    size += p.stat().st_size
            peak = max(peak, size)

    watcher = threading.Thread(target=watch)
    watcher.start()
    cpu_before = _gpg_cpu_seconds()
    try:
        with pytest.raises(FileRejected) as caught:
            world.platform.decrypt_and_verify(enc, out, world.partner_fpr, max_plain_bytes=limit)
    finally:
        running = False
        watcher.join()
    bounded_cpu = _gpg_cpu_seconds() - cpu_before
    assert caught.value.reason_code is RejectReason.TOO_LARGE
    assert list(work.iterdir()) == []  # no plain text, no partial
    # the watcher samples; on a loaded machine it may miss the short-lived file entirely
    # (CI once saw peak == 0), so only the bound is asserted — that gpg was stopped early is
    # proven by its CPU below
    assert peak <= limit
    assert _decrypting_gpgs(world.platform.home) == []
    # gpg was stopped, not left to inflate the rest: the same message decrypted in full
    # (no limit) costs gpg many times the CPU
    cpu_before = _gpg_cpu_seconds()
    with contextlib.suppress(FileRejected):
        world.platform.decrypt_and_verify(enc, work / "full.txt", world.partner_fpr)
    full_cpu = _gpg_cpu_seconds() - cpu_before
    assert bounded_cpu * 4 < full_cpu, (bounded_cpu, full_cpu)
