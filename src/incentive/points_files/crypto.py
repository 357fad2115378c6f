"""OpenPGP for points files: GnuPG (through python-gnupg) in a keyring of the platform's own.

The keyring is an isolated ``GNUPGHOME`` (by default ``<data_dir>/points_files/gnupg``) holding
the platform's key pair and the partners' public keys; nothing here touches the user's
``~/.gnupg``. Every gpg call is file to file (``--output``; input streamed in chunks), so a
million-record file never sits in memory.

The platform key is Ed25519 (signing) with a Curve25519 subkey (encryption). By default its
secret key is stored without a passphrase: the worker must use it unattended, so the
protection is the file permissions of the data directory (the keyring is created 0700). An
operator who wants it encrypted at rest gives ``passphrase_file`` (read by gpg itself, never
passed on a command line).

Partners are identified by the fingerprint registered for them, never by user id, and that
pin is the trust decision: gpg's web of trust is not used (``--trust-model always``).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gnupg

from incentive.points_files.errors import (
    FileRejected,
    PartnerKeyInvalid,
    PointsCryptoError,
    StorageFull,
)
from incentive.points_files.format import RejectReason
from incentive.settings import Settings

_FINGERPRINT = re.compile(r"[0-9A-F]{40}|[0-9A-F]{64}")
_PLATFORM_FPR_FILE = "platform-fingerprint"


@dataclass(frozen=True, slots=True)
class VerifiedMessage:
    signer_fingerprint: str
    signature_timestamp: int | None


def normalize_fingerprint(fingerprint: str) -> str:
    value = fingerprint.replace(" ", "").upper()
    if not _FINGERPRINT.fullmatch(value):
        raise ValueError(f"not an OpenPGP fingerprint: {fingerprint!r}")
    return value


def default_gnupg_home(settings: Settings) -> Path:
    return settings.data_dir / "points_files" / "gnupg"


def _status_keys(stderr: str) -> set[str]:
    keys: set[str] = set()
    for line in stderr.splitlines():
        if line.startswith("[GNUPG:] "):
            parts = line.split()
            if len(parts) > 1:
                keys.add(parts[1])
    return keys


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class PointsCrypto:
    """The platform's OpenPGP keyring. Build with ``init_platform_key``."""

    def __init__(self, home: Path, *, passphrase_file: Path | None = None) -> None:
        self.home = home
        options = ["--pinentry-mode", "loopback"]
        if passphrase_file is not None:
            options += ["--passphrase-file", str(passphrase_file)]
        else:
            options += ["--passphrase", ""]
        self._passphrase_file = passphrase_file
        self._gpg = gnupg.GPG(gnupghome=str(home), options=options)
        self._gpg.encoding = "utf-8"
        self._platform_fpr: str | None = None

    # -- platform key -------------------------------------------------------------------------

    @property
    def platform_fingerprint(self) -> str:
        if self._platform_fpr is None:
            raise PointsCryptoError("the platform key is not initialised")
        return self._platform_fpr

    def _ensure_platform_key(self, name: str, email: str) -> str:
        pin = self.home / _PLATFORM_FPR_FILE
        if pin.exists():
            fpr = normalize_fingerprint(pin.read_text().strip())
            if not self._gpg.list_keys(secret=True, keys=[fpr]):
                raise PointsCryptoError(f"platform key {fpr} is pinned but not in the keyring")
            return fpr
        existing = self._gpg.list_keys(secret=True)
        if len(existing) > 1:
            raise PointsCryptoError(
                f"{len(existing)} secret keys and no {_PLATFORM_FPR_FILE} file: pin one"
            )
        if existing:  # a keyring restored without its pin file: adopt its one key pair
            fpr = normalize_fingerprint(str(existing[0]["fingerprint"]))
            self._pin(fpr)
            return fpr
        params: dict[str, Any] = {
            "key_type": "EDDSA",
            "key_curve": "ed25519",
            "key_usage": "sign",
            "subkey_type": "ECDH",
            "subkey_curve": "cv25519",
            "subkey_usage": "encrypt",
            "name_real": name,
            "name_email": email,
            "expire_date": "0",
        }
        if self._passphrase_file is None:
            params["no_protection"] = True
        else:
            params["passphrase"] = self._passphrase_file.read_text().splitlines()[0]
        result = self._gpg.gen_key(self._gpg.gen_key_input(**params))
        if not result.fingerprint:
            raise PointsCryptoError(f"gpg could not create the platform key: {result.stderr}")
        fpr = normalize_fingerprint(str(result.fingerprint))
        self._pin(fpr)
        return fpr

    def _pin(self, fingerprint: str) -> None:
        pin = self.home / _PLATFORM_FPR_FILE
        tmp = pin.with_suffix(".tmp")
        tmp.write_text(fingerprint + "\n")
        tmp.replace(pin)

    def export_public_key(self) -> str:
        """The platform's public key, ASCII-armoured, to hand to partners."""
        armoured = self._gpg.export_keys(self.platform_fingerprint, armor=True)
        if not isinstance(armoured, str) or "BEGIN PGP PUBLIC KEY BLOCK" not in armoured:
            raise PointsCryptoError("gpg could not export the platform public key")
        return armoured

    # -- partner keys -------------------------------------------------------------------------

    def import_partner_key(self, armoured: str) -> str:
        """Import one partner public key; returns its primary-key fingerprint (to register).

        Refuses anything but exactly one public key able to sign and encrypt, not revoked or
        expired, and never the platform's own key.
        """
        scanned = self._gpg.scan_keys_mem(armoured)
        if len(scanned) != 1:
            raise PartnerKeyInvalid(f"expected one public key, found {len(scanned)}")
        key = scanned[0]
        if key.get("type") != "pub":
            raise PartnerKeyInvalid("not a public key (secret keys are never imported)")
        fpr = normalize_fingerprint(str(key["fingerprint"]))
        if self._platform_fpr is not None and fpr == self._platform_fpr:
            raise PartnerKeyInvalid("this is the platform's own key")
        result = self._gpg.import_keys(armoured)
        if fpr not in {normalize_fingerprint(str(f)) for f in result.fingerprints or []}:
            raise PartnerKeyInvalid(f"gpg did not import the key: {result.summary()}")
        listed = self._gpg.list_keys(keys=[fpr])
        if len(listed) != 1:
            raise PartnerKeyInvalid("key not found after import")
        info = listed[0]
        capabilities = str(info.get("cap", ""))
        if info.get("trust") in {"r", "e", "i", "d"}:
            raise PartnerKeyInvalid("the key is revoked, expired or invalid")
        if "S" not in capabilities or "E" not in capabilities:
            raise PartnerKeyInvalid("the key cannot both sign and encrypt")
        return fpr

    # -- messages -----------------------------------------------------------------------------

    def decrypt_and_verify(
        self,
        in_path: Path,
        out_path: Path,
        expected_fingerprint: str,
        *,
        max_plain_bytes: int | None = None,
    ) -> VerifiedMessage:
        """Decrypt ``in_path`` (binary or armoured) to ``out_path`` and check the signature.

        Raises ``FileRejected(DECRYPT_FAILED)`` when it is not a message encrypted to the
        platform key that decrypts intact, and ``FileRejected(BAD_SIGNATURE)`` when it is not
        signed, the signature is bad, or any signer is not ``expected_fingerprint`` (the
        partner's registered primary key). ``out_path`` exists only on success.

        The plain text is streamed from gpg's output to ``out_path`` by this process, counted
        as it goes: a message that expands past ``max_plain_bytes`` (a compression bomb: a few
        KB of bzip2 that inflate to gigabytes) stops gpg at once, deletes what was written and
        raises ``FileRejected(TOO_LARGE)``, before its signature is even looked at. A disk that
        fills up meanwhile raises ``StorageFull`` (nothing is left behind either).
        """
        expected = normalize_fingerprint(expected_fingerprint)
        partial = out_path.with_name(out_path.name + ".partial")
        _remove(partial)
        try:
            with partial.open("wb") as sink_file:
                sink = _PlainSink(sink_file, max_plain_bytes)
                gpg = _StreamingGPG(self, sink)
                try:
                    result = gpg.decrypt_file(
                        str(in_path),
                        extra_args=["--trust-model", "always", "--no-auto-key-retrieve"],
                    )
                except (OSError, ValueError) as exc:  # gpg quit early (or was stopped by us)
                    if sink.too_large or sink.failure is not None:
                        result = None
                    else:
                        raise FileRejected(RejectReason.DECRYPT_FAILED, f"gpg: {exc}") from exc
            if sink.too_large:
                raise FileRejected(
                    RejectReason.TOO_LARGE,
                    f"the decrypted file is larger than {sink.limit} bytes",
                )
            if sink.failure is not None:
                raise StorageFull(f"could not write the decrypted file: {sink.failure}")
            assert result is not None
            statuses = _status_keys(str(result.stderr))
            if (
                not result.ok
                or "DECRYPTION_OKAY" not in statuses
                or statuses & {"DECRYPTION_FAILED", "BADMDC"}
            ):
                raise FileRejected(
                    RejectReason.DECRYPT_FAILED,
                    f"not a message for the platform key that decrypts intact ({result.status})",
                )
            signers = self._good_signers(result, statuses)
            if not signers:
                raise FileRejected(RejectReason.BAD_SIGNATURE, "the file is not signed validly")
            if any(s != expected for s in signers):
                raise FileRejected(
                    RejectReason.BAD_SIGNATURE,
                    "signed by a key other than the partner's registered key",
                )
            if result.returncode != 0:
                raise FileRejected(RejectReason.BAD_SIGNATURE, f"gpg reported {result.status}")
            partial.replace(out_path)
            return VerifiedMessage(expected, _int_or_none(result.sig_timestamp))
        finally:
            _remove(partial)

    @staticmethod
    def _good_signers(result: Any, statuses: set[str]) -> list[str]:
        """Primary-key fingerprints of the signatures, or ``[]`` if any is missing or bad."""
        if statuses & {"BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "NO_PUBKEY"}:
            return []
        if result.problems or not result.valid or "VALIDSIG" not in statuses:
            return []
        signers: list[str] = []
        for info in result.sig_info.values():
            fpr = info.get("pubkey_fingerprint") or info.get("fingerprint")
            if info.get("status") != "signature valid" or not fpr:
                return []
            signers.append(normalize_fingerprint(str(fpr)))
        return signers

    def encrypt_and_sign(
        self, in_path: Path, out_path: Path, recipient_fingerprint: str, *, armor: bool = False
    ) -> None:
        """Encrypt ``in_path`` to the partner's key, signed by the platform key, into ``out_path``.

        Written to a temporary name and renamed, so ``out_path`` is complete or absent.
        """
        recipient = normalize_fingerprint(recipient_fingerprint)
        partial = out_path.with_name(out_path.name + ".partial")
        _remove(partial)
        try:
            result = self._gpg.encrypt_file(
                str(in_path),
                recipients=[recipient],
                sign=self.platform_fingerprint,
                always_trust=True,
                armor=armor,
                output=str(partial),
                extra_args=["--no-auto-key-retrieve"],
            )
            if not result.ok or result.returncode != 0 or not partial.exists():
                raise PointsCryptoError(
                    f"gpg could not encrypt to {recipient}: {result.status} {result.status_detail}"
                )
            partial.replace(out_path)
        finally:
            _remove(partial)


class _PlainSink:
    """Takes gpg's plain output chunk by chunk (python-gnupg's ``on_data``), writes it to the
    partial file and stops gpg as soon as the output passes ``limit`` bytes."""

    def __init__(self, out: Any, limit: int | None) -> None:
        self.out = out
        self.limit = limit
        self.size = 0
        self.too_large = False
        self.failure: OSError | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def __call__(self, data: bytes) -> bool:
        if not data or self.too_large or self.failure is not None:
            return False
        if self.limit is not None and self.size + len(data) > self.limit:
            self.too_large = True
            self._stop_gpg()
            return False
        try:
            self.out.write(data)
        except OSError as exc:  # ENOSPC and the like
            self.failure = exc
            self._stop_gpg()
            return False
        self.size += len(data)
        return False  # never buffered in memory

    def _stop_gpg(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()


class _StreamingGPG(gnupg.GPG):  # type: ignore[misc]
    """A one-call GPG on the same keyring and options whose output goes to a ``_PlainSink``
    (a new instance per call: ``on_data`` is per instance, and calls may run in parallel)."""

    def __init__(self, crypto: PointsCrypto, sink: _PlainSink) -> None:
        parent = crypto._gpg
        self._sink: _PlainSink | None = None  # set after gpg's own start-up calls
        super().__init__(gnupghome=parent.gnupghome, options=list(parent.options or []))
        self.encoding = parent.encoding
        self.buffer_size = 64 * 1024
        self.on_data = sink
        self._sink = sink

    def _open_subprocess(self, args: Any, passphrase: bool = False) -> Any:
        process = super()._open_subprocess(args, passphrase)
        if self._sink is not None:
            self._sink.process = process
        return process


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def init_platform_key(
    home: Path, name: str, email: str, *, passphrase_file: Path | None = None
) -> PointsCrypto:
    """Open the keyring at ``home`` (created 0700), creating the platform key pair if none.

    Idempotent: the platform key's fingerprint is pinned in ``home/platform-fingerprint`` and
    reused on every later start (a keyring with exactly one key pair and no pin adopts it).
    """
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    crypto = PointsCrypto(home, passphrase_file=passphrase_file)
    crypto._platform_fpr = crypto._ensure_platform_key(name, email)
    return crypto
