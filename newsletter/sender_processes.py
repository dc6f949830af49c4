"""The sender processes of a send (`senders.py`), spawned and let go.

Apart from `senders.py` because it imports nothing heavy: `newsletter send` starts
them as soon as it has read its settings, before it imports what it needs to
gather, render and plan. A sender's own imports (a third of a second) then use
another core while this process is still starting, instead of beside the render.
A sender imports the send's modules itself (`_run`).
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import queue
import secrets
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

# a sender process costs ~0.35 s of imports, made while the send starts and renders.
# Measured side by side (bench/send.py, two cores): one process beside a thread of the
# send pays from about FIRST_PROCESS batches (30,000 readers: even); a second process
# (the list then planned in two parts) from about twice PROCESS_EVERY (300,000: even)
FIRST_PROCESS = 50
PROCESS_EVERY = 150
POLL = 0.05  # seconds between looks at a stop request and at the senders
# the transports that send a batch in one request: their work per batch is CPU, worth a
# process (`Transport.in_doubt == "batch"`)
ONE_REQUEST_A_BATCH = frozenset({"sendgrid"})
ROW_BYTES = 40  # about the size of a list row of an address and a name


def processes_for(batches: int, workers: int) -> int:
    """How many sender processes a send of about `batches` batches is worth: none when
    threads in the send's own process do better. Fewer than `workers`: the send's own
    process is a sender too."""
    if workers < 2 or batches < FIRST_PROCESS:
        return 0
    return min(workers, max(1, batches // PROCESS_EVERY))


def batches_in_file(path: Path, batch_size: int) -> int:
    """About how many batches a list file makes, from its size alone (it is not read)."""
    size = path.stat().st_size if path.exists() else 0
    return size // (ROW_BYTES * batch_size) + 1


def for_a_send(
    transport: str, workers: int, list_path: Path, batch_size: int
) -> SenderProcesses | None:
    """Senders for a send of this list, started before anything else is known (a send
    that turns out not to want them lets them go): none where they will not be wanted."""
    if transport not in ONE_REQUEST_A_BATCH:
        return None
    count = processes_for(batches_in_file(list_path, batch_size), workers)
    return SenderProcesses.spawn(count) if count else None


class Flag:
    """Yes or no, shared by the send and its senders: a byte of shared memory, read
    without a lock. (A multiprocessing Event takes a lock across processes for each look:
    with every core busy, the senders waited 0.3 ms a batch for it.)"""

    def __init__(self, context: Any) -> None:
        self._value = context.RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return bool(self._value.value)


class Inbox:
    """What the senders say, each on a pipe of its own: no lock is shared between
    processes, so a sender killed with -9 mid-word breaks only its own pipe (a shared
    multiprocessing queue would keep its lock held, and the other senders would wait
    on it for ever)."""

    def __init__(self, pipes: list[Connection]) -> None:
        self._open = list(pipes)
        self._heard: collections.deque[tuple[str, str, Any]] = collections.deque()

    def add(self, pipe: Connection) -> None:
        self._open.append(pipe)

    def close(self) -> None:
        for pipe in self._open:
            pipe.close()
        self._open = []

    def _drop(self, pipe: Connection) -> None:
        self._open.remove(pipe)
        pipe.close()

    def get(self, timeout: float) -> tuple[str, str, Any]:
        """The next word of any sender; `queue.Empty` if none came within `timeout`."""
        if not self._heard:
            for pipe in wait(self._open, timeout) if self._open else ():
                try:
                    self._heard.append(pipe.recv())
                except (EOFError, OSError):  # it ended, or died mid-word: nothing more
                    self._drop(pipe)
                except BaseException:  # a Ctrl-C mid-word: the rest of it would be misread
                    self._drop(pipe)
                    raise
        if not self._heard:
            if not self._open:
                time.sleep(timeout)  # every sender gone: the caller looks at them
            raise queue.Empty
        return self._heard.popleft()


def thread_pipe() -> tuple[Connection, Connection]:
    """The ends a sender in a thread of the send talks to it on: (the send's, the thread's)."""
    return multiprocessing.Pipe(duplex=False)


@dataclass
class SenderProcesses:
    """Spawned senders, each with a pipe of its own for its jobs (to it) and what it says
    (from it), and two flags for all: a stop request and a halt (one of them failed)."""

    processes: list[Any]
    pipes: list[Connection]
    inbox: Inbox
    stop: Flag
    halt: Flag
    given_work: bool = False

    @classmethod
    def spawn(cls, count: int) -> SenderProcesses:
        """`count` senders, started with `spawn` (never a fork of a process holding
        threads and database connections), sharing one string-hash seed."""
        context = multiprocessing.get_context("spawn")
        started = cls([], [], Inbox([]), Flag(context), Flag(context))
        try:
            with _plain_main(), _one_hash_seed():
                for n in range(count):
                    mine, theirs = context.Pipe()
                    started.pipes.append(mine)
                    started.inbox.add(mine)
                    sender = context.Process(
                        target=_run,
                        args=(theirs, started.stop, started.halt, os.getpid()),
                        name=f"sender-{n + 1}",
                        daemon=True,
                    )
                    try:
                        sender.start()
                    finally:
                        theirs.close()  # the sender's end, here: its death is then an end of file
                    started.processes.append(sender)
        except BaseException:  # Ctrl-C, or no more processes: none is left waiting
            started.close()
            raise
        return started

    def give(self, sender: int, job: object) -> None:
        """A job for this sender; one that has died is noticed by whoever waits for it. One
        given half a job (a Ctrl-C meanwhile) is stopped: it would wait for the rest."""
        self.given_work = True
        try:
            self.pipes[sender].send(job)
        except OSError:
            pass
        except BaseException:
            self.processes[sender].kill()
            raise

    def close(self) -> None:
        """Let the senders go; again is harmless. Ones never given work are stopped where
        they are (still importing, or waiting); the others are told there is nothing more
        and waited for, reading and dropping what they still say (a sender cannot finish
        a word nobody reads)."""
        if not self.processes:
            self.inbox.close()  # a start that failed may have made one pipe
            return
        self.stop.set()  # one still at work (the send failed) ends after its batch in flight
        if not self.given_work:
            for sender in self.processes:
                sender.kill()
        for n, sender in enumerate(self.processes):
            if sender.is_alive() and self.given_work:
                self.give(n, None)
        for sender in self.processes:
            while sender.is_alive() and self.given_work:
                with contextlib.suppress(queue.Empty):
                    self.inbox.get(POLL)
            sender.join()
        self.inbox.close()  # the senders' pipes, and those of the send's own threads
        self.processes, self.pipes = [], []


def _run(pipe: Connection, stop: Flag, halt: Flag, parent: int) -> None:
    """A sender's life, imported in the sender (the send's modules are its own imports)."""
    from newsletter.senders import sender_main

    sender_main(pipe, stop, halt, parent)


@contextlib.contextmanager
def _plain_main() -> Iterator[None]:
    """Spawn without the main module: a child would otherwise import the CLI's (`python -m
    newsletter`, the console script), everything a send uses, for nothing it needs."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


@contextlib.contextmanager
def _one_hash_seed() -> Iterator[None]:
    """The senders share a string-hash seed, new for each send: their hashes of an address
    agree, so parts of the list read by different senders can be put together."""
    before = os.environ.get("PYTHONHASHSEED")
    os.environ["PYTHONHASHSEED"] = str(secrets.randbelow(2**32 - 1) + 1)
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONHASHSEED"]
        else:
            os.environ["PYTHONHASHSEED"] = before
