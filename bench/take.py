"""Taking the next batch of an issue, as each sender does before each request: the
cost of one take (and of recording it sent) with N batches planned, with the index of
the pending batches in order and without it (a database made before it).

    python bench/take.py                       # 1,000 and 10,000 batches, 3 runs each

Each run plans N batches of ten readers in a fresh SQLite state database and takes
and records every one, in one process; the two kinds alternate. Prints one JSON line
per N: the median milliseconds a take and a record. Not a test: figures go to
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
import time

from newsletter.state import Ledger
from newsletter.state.issues import PlanContent

CONTENT = PlanContent(
    subject="s",
    html="h",
    text="t",
    tokens=frozenset(),
    story_keys=[],
    window_start=None,
    window_end=dt.datetime(2024, 3, 5, tzinfo=dt.UTC),
    transport="sendgrid",
)


def one_run(batches: int, indexed: bool) -> tuple[float, float]:
    """Milliseconds per take and per record, every batch taken once."""
    with tempfile.TemporaryDirectory() as folder, Ledger(f"sqlite:///{folder}/b.db") as ledger:
        if not indexed:
            with ledger.engine.begin() as conn:
                conn.exec_driver_sql("DROP INDEX ix_batches_pending_order")
                conn.exec_driver_sql(
                    "CREATE INDEX ix_batches_issue_status ON batches (issue_id, status)"
                )
        claim = ledger.claim("main", dt.date(2024, 3, 5), "bench", dt.timedelta(hours=1))
        rows = [[f"r{n}@example.com", f"Reader {n}"] for n in range(10)]
        ledger.save_plan(claim.issue.id, CONTENT, [(["email", "name"], rows)] * batches)
        taking = recording = 0.0
        while True:
            start = time.perf_counter()
            taken = ledger.take_next_batch(claim.issue.id)
            taken_at = time.perf_counter()
            taking += taken_at - start
            if taken is None:
                break
            ledger.mark_submitted_many([(taken[0].id, "x", None)])
            recording += time.perf_counter() - taken_at
        return taking / batches * 1000, recording / batches * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for batches in args.batches:
        found: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for _ in range(args.runs):
            for indexed in (True, False):
                found[indexed].append(one_run(batches, indexed))
        result: dict[str, object] = {"batches": batches, "runs": args.runs}
        for indexed, label in ((True, "indexed"), (False, "not_indexed")):
            result[f"{label}_take_ms"] = round(statistics.median(t for t, _ in found[indexed]), 3)
            result[f"{label}_record_ms"] = round(statistics.median(r for _, r in found[indexed]), 3)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
