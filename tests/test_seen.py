"""Reading a list fast: an address met twice caught without keeping every address
(newsletter/seen.py), and a chunk's addresses checked in a few passes."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter.seen import (
    ExactSeen,
    HashedSeen,
    SavedHashes,
    WatchedSeen,
    repeated_across,
    repeated_in_files,
)
from newsletter.subscribers import _PLAUSIBLE, all_plausible


def keys(first: int, count: int) -> list[str]:
    return [f"reader{n:07d}@example.com" for n in range(first, first + count)]


def test_hashes_find_exactly_the_addresses_met_twice_across_chunks() -> None:
    seen = HashedSeen()
    for start in range(0, 20_000, 2000):
        assert seen.fresh(keys(start, 2000))
    seen.first("reader0000042@example.com")  # met again, one at a time
    seen.fresh(["reader0019999@example.com", "new@example.com"])
    assert len(seen) == 20_003
    assert seen.repeated() == {hash("reader0000042@example.com"), hash("reader0019999@example.com")}


def test_parts_read_apart_are_put_together_a_range_at_a_time() -> None:
    first, second = HashedSeen(), HashedSeen()
    first.fresh(keys(0, 3000))
    second.fresh(keys(3000, 3000))
    assert repeated_across([first, second]) == frozenset()
    second.first("reader0000001@example.com")  # the first part's reader, in the second
    assert repeated_across([first, second]) == {hash("reader0000001@example.com")}


def test_parts_hand_their_hashes_over_in_files(tmp_path: Path) -> None:
    first, second = HashedSeen(), HashedSeen()
    first.fresh(keys(0, 5000))
    second.fresh(keys(5000, 5000))
    second.first("reader0000042@example.com")
    saved = [SavedHashes.save(first, tmp_path / "a"), SavedHashes.save(second, tmp_path / "b")]
    assert sum(saved[0].sizes) == 5000 and (tmp_path / "a").stat().st_size == 5000 * 8
    assert repeated_in_files(saved) == {hash("reader0000042@example.com")}
    assert repeated_in_files(saved[:1]) == frozenset()


def test_no_repeat_is_found_in_a_list_of_distinct_addresses() -> None:
    seen = HashedSeen()
    for start in range(0, 50_000, 2000):
        seen.fresh(keys(start, 2000))
    assert seen.repeated() == frozenset()


def test_the_second_read_skips_a_real_duplicate_and_keeps_two_people_sharing_a_hash() -> None:
    # as if "a@example.com" and "b@example.com" had had one hash: both are watched
    watch = frozenset({hash("a@example.com"), hash("b@example.com")})
    seen = WatchedSeen(watch)
    assert seen.fresh(["x@example.com", "a@example.com"])
    assert seen.first("b@example.com")  # another person: gets the issue
    assert not seen.first("a@example.com")  # the same person again
    assert not seen.fresh(["y@example.com", "a@example.com"])  # the chunk goes row by row
    assert seen.fresh(["y@example.com", "z@example.com"])  # nothing watched: nothing kept
    assert seen.keys == {"a@example.com", "b@example.com"}


def test_exact_seen_records_nothing_from_a_chunk_it_refuses() -> None:
    seen = ExactSeen()
    assert seen.fresh(["a@example.com", "b@example.com"])
    assert not seen.fresh(["c@example.com", "a@example.com"])
    assert seen.first("c@example.com") and not seen.first("c@example.com")
    assert seen.keys == {"a@example.com", "b@example.com", "c@example.com"}


ADDRESS_CHARS = 'ab.@ \t\n,;<>()[]"\\\x00\x85\u2028é-_+'


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.text(alphabet=ADDRESS_CHARS, max_size=10).map(str.strip), min_size=1))
def test_the_chunk_check_agrees_with_the_address_pattern(emails: list[str]) -> None:
    """The C-level check of a whole chunk says yes exactly when every address matches."""
    assert all_plausible(emails) == all(_PLAUSIBLE.match(e) for e in emails)
