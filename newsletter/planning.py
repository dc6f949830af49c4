"""Planning batches: who gets the issue, a batch at a time, and each one's own values.

Streams the list (a chunk and one batch held at a time, whatever its size),
leaves out suppressed addresses, and builds a stored batch back into the
columns a transport sends, with each recipient's signed unsubscribe link.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence, Set
from itertools import compress

from newsletter.models import Subscriber
from newsletter.signing import Signer, unsubscribe_url
from newsletter.subscribers import Chunk
from newsletter.transports.base import Batch

FIXED_COLUMNS = ("email", "name")
BUILT_IN_TOKENS = frozenset({"email", "name", "first_name", "unsubscribe_url"})


def value_columns(tokens: Set[str]) -> list[str]:
    """What a batch row stores besides email and name: the other tokens the email uses."""
    return sorted(set(tokens) - {"email", "name", "unsubscribe_url"})


def plan_batches(
    chunks: Iterable[Chunk],
    suppressed: Set[str],
    tokens: Set[str],
    batch_size: int,
    skipped: list[str] | None = None,
) -> Iterator[tuple[list[str], list[Sequence[str]]]]:
    """Batches of recipient rows (columns, rows), suppressed addresses left out.

    Streams: a list's chunk and one batch are held at a time, whatever its size.
    """
    extra = value_columns(tokens)
    columns = [*FIXED_COLUMNS, *extra]
    pending: list[Sequence[str]] = []
    for chunk in chunks:
        keep = None
        if suppressed and not suppressed.isdisjoint(chunk.keys):
            keep = [key not in suppressed for key in chunk.keys]
            if skipped is not None:
                skipped.extend(e for e, k in zip(chunk.emails, keep, strict=True) if not k)
        if extra:
            people = chunk.subscribers()
            rows = [
                _row_with_values(s, extra) for s in (compress(people, keep) if keep else people)
            ]
        elif keep:
            rows = list(compress(zip(chunk.emails, chunk.names, strict=True), keep))
        else:
            rows = list(zip(chunk.emails, chunk.names, strict=True))
        pending += rows
        while len(pending) >= batch_size:
            yield columns, pending[:batch_size]
            pending = pending[batch_size:]
    if pending:
        yield columns, pending


def _row_with_values(subscriber: Subscriber, extra: Sequence[str]) -> list[str]:
    values = subscriber.values()
    return [subscriber[0], subscriber[1], *(values.get(column, "") for column in extra)]


class UnsubscribeLinks:
    """Each recipient's unsubscribe URL and the RFC 8058 one-click headers."""

    def __init__(self, signer: Signer, base_url: str, list_name: str, mailto: str | None) -> None:
        self.signer = signer
        self.base_url = base_url
        self.list_name = list_name
        self.mailto = mailto
        self._mailto = f", <mailto:{mailto}?subject=unsubscribe>" if mailto else ""

    def for_address(self, email: str) -> tuple[str, dict[str, str]]:
        url = unsubscribe_url(self.base_url, self.signer.sign("unsubscribe", self.list_name, email))
        return url, self.headers(url)

    def urls(self, emails: Sequence[str]) -> list[str]:
        """Everyone's unsubscribe URL in one go (the signing loop is the costly part)."""
        base = unsubscribe_url(self.base_url, "")
        return [
            base + token for token in self.signer.sign_many("unsubscribe", self.list_name, emails)
        ]

    def headers(self, url: str) -> dict[str, str]:
        return {
            "List-Unsubscribe": f"<{url}>{self._mailto}",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }

    def header_columns(self, urls: Sequence[str]) -> dict[str, list[str | None]]:
        """`headers` for a whole batch, as columns."""
        mailto = self._mailto
        return {
            "List-Unsubscribe": [f"<{url}>{mailto}" for url in urls],
            "List-Unsubscribe-Post": ["List-Unsubscribe=One-Click"] * len(urls),
        }


def build_batch(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    links: UnsubscribeLinks | None,
    suppressed: Set[str],
) -> tuple[Batch, int]:
    """A stored batch as columns, minus anyone suppressed since it was planned."""
    kept = [row for row in rows if row[0].lower() not in suppressed] if suppressed else rows
    emails = [row[0] for row in kept]
    names = [row[1] for row in kept]
    values: dict[str, list[str]] = {"email": emails, "name": names}
    for index, column in enumerate(columns[2:], start=2):
        values[column] = [row[index] for row in kept]
    headers: dict[str, list[str | None]] = {}
    if links is not None:
        urls = links.urls(emails)
        values["unsubscribe_url"] = urls
        headers = links.header_columns(urls)
    return Batch(emails, names, values, headers), len(rows) - len(kept)
