"""The outbox transport: each message as an `.eml` file; nothing leaves the machine.

The no-credentials default for trying the tool, and a record of exactly what
would have been sent (open a file in any mail client).

Each file is written whole or not at all (a temporary file in the same folder,
fsync, rename), so the folder itself says who has the issue: a rerun after a
crash or a full disk skips whoever has a file and writes the rest. Nobody is
ever in doubt, and nobody gets two.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from newsletter.failpoints import failpoint
from newsletter.transports.base import (
    BatchFailure,
    InDoubt,
    Message,
    PermanentFailure,
    Receipt,
    Recipient,
)
from newsletter.transports.mime import MimeBuilder

PART_SUFFIX = ".part"  # a message being written; never a finished one
_UNSAFE = re.compile(r"[^a-z0-9@._+-]")
# the last line of a whole multipart message: its closing boundary
_CLOSED = re.compile(rb"\n--[^\r\n]+--\r?\n?\Z")


def file_name(email: str) -> str:
    """One file per address, never shared by two: readable where the address allows it."""
    key = email.lower()
    safe = _UNSAFE.sub("_", key)
    if safe != key or len(safe) > 200:  # changed or too long: a hash keeps it unique
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
        safe = f"{safe[:180]}-{digest}"
    return f"{safe}.eml"


def is_whole(path: Path) -> bool:
    """A finished message: a file that ends with its closing MIME boundary."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 256))
            return _CLOSED.search(handle.read()) is not None
    except FileNotFoundError:
        return False


class OutboxTransport:
    name = "outbox"
    in_doubt: ClassVar[InDoubt] = "none"  # the folder says who has the issue

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._builder: MimeBuilder | None = None
        self._swept = False

    def send_batch(self, message: Message, recipients: Sequence[Recipient]) -> Receipt:
        if self._builder is None or self._builder.message is not message:
            self._builder = MimeBuilder(message)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not self._swept:
                self._sweep()
        except OSError as exc:
            raise PermanentFailure(f"cannot write to {self.folder}: {exc.strerror}") from None
        for index, recipient in enumerate(recipients):
            path = self.folder / file_name(recipient.email)
            if is_whole(path):
                continue  # written by an earlier run that stopped: they have it already
            try:
                data = self._builder.build_bytes(recipient, eight_bit=True)
                self._write(
                    path, data if data is not None else self._builder.build(recipient).as_bytes()
                )
            except OSError as exc:
                raise PermanentFailure(
                    f"cannot write {path}: {exc.strerror}; free some space or fix the folder, "
                    "then run the same command again to resume",
                    done=index,
                ) from None
            except BatchFailure as exc:  # a message that cannot be written (mime.py says why)
                exc.done = index
                raise
        try:
            self._sync_folder()
        except OSError as exc:
            raise PermanentFailure(
                f"cannot write to {self.folder}: {exc.strerror}", done=len(recipients)
            ) from None
        return Receipt(message_id=None)

    def _write(self, path: Path, data: bytes) -> None:
        part = path.with_name(f".{path.name}{PART_SUFFIX}")
        try:
            with part.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            failpoint("outbox.written")
            os.replace(part, path)
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            raise

    def _sweep(self) -> None:
        """Half-written files a killed run left behind: never a message, so removed."""
        for stale in self.folder.glob(f".*{PART_SUFFIX}"):
            stale.unlink(missing_ok=True)
        self._swept = True

    def _sync_folder(self) -> None:
        """The renames on disk before the batch is recorded as submitted."""
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        pass
