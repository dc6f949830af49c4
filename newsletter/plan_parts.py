"""A plan made in parts: each sender process reads one part of the list and stores its
batches as drafts, side by side; the send then publishes them as one plan, or none.

Reading and checking a million rows is a few seconds of one core; split over the
senders (already started, see `senders.py`), it costs a fraction of that in wall
time. The senders share one string-hash seed (set when they are spawned), so their
hashes of one address agree, and a second read is a sender's too. What a plan promises is kept: the list is checked whole before anything is
owed (a bad row anywhere stops the send, as in one piece), an address is sent
once however far apart its rows (the parts' hashes are put together; equal
ones send the plan back to one piece, `seen.py`), and the plan becomes owed in
one transaction (`IssueStore.publish_plan`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from newsletter.errors import SubscriberError
from newsletter.planning import plan_batches
from newsletter.seen import HashedSeen, SavedHashes, Seen, WatchedSeen, repeated_in_files
from newsletter.state.issues import IssueStore
from newsletter.subscribers import ListPart, ListReport, RowProblem, read_chunks

# drafts of part k are numbered from (k + 1) * PART_SEQS, clear of the published plan's
# 1, 2, ... (a part of fifty million batches is fifty billion readers)
PART_SEQS = 50_000_000
PROBLEMS_KEPT = 100  # a part reports this many of its bad rows by line (and their count)


@dataclass(frozen=True)
class PlanJob:
    """What a sender needs to plan its part: all of it picklable."""

    database_url: str
    issue_id: int
    path: Path
    part: ListPart
    index: int
    tokens: frozenset[str]
    suppressed: frozenset[str]
    batch_size: int
    # where the part's hashes are handed over (a folder of the send's)
    hashes: Path | None = None
    # a second read of the whole list, keeping the exact addresses of these hashes
    watch: frozenset[int] | None = None

    @property
    def first_seq(self) -> int:
        return (self.index + 1) * PART_SEQS


@dataclass
class PartPlan:
    """What a sender's part came to: its drafts, what it left out, and its hashes."""

    index: int
    first_seq: int
    batches: int = 0
    recipients: int = 0
    suppressed: int = 0
    duplicates: int = 0
    problems: list[RowProblem] = field(default_factory=list)
    problem_count: int = 0
    hashes: SavedHashes | None = None  # its readers' hashes (none for a second read)
    error: str | None = None  # the part could not be read at all (not UTF-8, say)


def plan_part(job: PlanJob, store: IssueStore) -> PartPlan:
    """In a sender: read the part, leave out the suppressed, store its batches as drafts."""
    result = PartPlan(job.index, job.first_seq)
    report = ListReport(job.path)
    skipped: list[str] = []
    seen: Seen = HashedSeen() if job.watch is None else WatchedSeen(job.watch)
    chunks = read_chunks(job.path, report, seen=seen, part=job.part)
    batches = plan_batches(chunks, job.suppressed, job.tokens, job.batch_size, skipped)
    try:
        result.batches, result.recipients = store.add_draft_batches(
            job.issue_id, job.first_seq, batches
        )
    except SubscriberError as exc:
        result.error = str(exc)
    if isinstance(seen, HashedSeen) and job.hashes is not None and result.error is None:
        result.hashes = SavedHashes.save(seen, job.hashes / f"part-{job.index}")
    result.suppressed, result.duplicates = len(skipped), report.duplicates
    result.problems, result.problem_count = report.problems[:PROBLEMS_KEPT], len(report.problems)
    return result


@dataclass
class WholePlan:
    """The parts put together, in the list's order."""

    parts: list[PartPlan]
    report: ListReport
    suppressed: int
    repeated: frozenset[int]

    @property
    def numbering(self) -> list[tuple[int, int]]:
        """Each part's first draft number and count, for `publish_plan`."""
        return [(p.first_seq, p.batches) for p in self.parts]


def put_together(path: Path, parts: Sequence[PartPlan]) -> WholePlan:
    """The parts' reports as one list's (bad rows by line, the first of them in full), or
    SubscriberError if a part could not be read; and the hashes met in two places."""
    ordered = sorted(parts, key=lambda p: p.index)
    for part in ordered:
        if part.error is not None:
            raise SubscriberError(part.error)
    report = ListReport(path, duplicates=sum(p.duplicates for p in ordered))
    for part in ordered:
        report.problems += part.problems
        report.unlisted += part.problem_count - len(part.problems)
    saved = [part.hashes for part in ordered if part.hashes is not None]
    repeated = repeated_in_files(saved) if len(saved) == len(ordered) else frozenset()
    return WholePlan(ordered, report, sum(p.suppressed for p in ordered), repeated)
