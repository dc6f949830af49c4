"""The outbox transport: each message as an `.eml` file; nothing leaves the machine.

The no-credentials default for trying the tool, and a record of exactly what
would have been sent (open a file in any mail client).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from newsletter.transports.base import (
    BatchFailure,
    Message,
    PermanentFailure,
    Receipt,
    Recipient,
)
from newsletter.transports.mime import MimeBuilder


class OutboxTransport:
    name = "outbox"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._builder: MimeBuilder | None = None

    def send_batch(self, message: Message, recipients: Sequence[Recipient]) -> Receipt:
        if self._builder is None or self._builder.message is not message:
            self._builder = MimeBuilder(message)
        self.folder.mkdir(parents=True, exist_ok=True)
        for index, recipient in enumerate(recipients):
            safe = re.sub(r"[^A-Za-z0-9@._+-]", "_", recipient.email.lower())
            path = self.folder / f"{safe}.eml"
            try:
                # exclusive: one file per recipient per issue, so a duplicate cannot hide
                data = self._builder.build_bytes(recipient, eight_bit=True)
                with path.open("xb") as handle:
                    handle.write(
                        data if data is not None else self._builder.build(recipient).as_bytes()
                    )
            except FileExistsError:
                raise PermanentFailure(
                    f"{path} already exists: {recipient.email} would get the issue twice",
                    done=index,
                ) from None
            except OSError as exc:
                raise PermanentFailure(f"cannot write {path}: {exc.strerror}", done=index) from None
            except BatchFailure as exc:  # a message that cannot be written (mime.py says why)
                exc.done = index
                raise
        return Receipt(message_id=None)

    def close(self) -> None:
        pass
