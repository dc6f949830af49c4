"""A small tmpfs the test mounts and removes itself: a disk that really fills up.

Why not a fake: "No space left on device" must come from the kernel, at whatever
write happens to hit it (a message file, SQLite's write-ahead log), for the test
to show that nothing already done is lost. Tests and CI run as root; mounting
needs it, and a test that cannot mount fails rather than skipping.

    with Tmpfs(tmp_path / "disk", size=2 * MB) as disk:
        disk.fill(leave=300 * KB)   # a filler file takes the rest
        ...                         # the send fails: the disk is full
        disk.free()                 # space comes back; the rerun finishes
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import TracebackType

KB = 1024
MB = 1024 * KB


class Tmpfs:
    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._filler = path / ".filler"

    def __enter__(self) -> Tmpfs:
        self.path.mkdir(parents=True, exist_ok=True)
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)],
            capture_output=True,
            text=True,
        )
        if mounted.returncode != 0:
            raise RuntimeError(
                f"cannot mount a tmpfs at {self.path} (the disk-full tests run as root): "
                f"{mounted.stderr.strip()}"
            )
        return self

    def available(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def fill(self, leave: int) -> None:
        """Take all but `leave` bytes with a filler file."""
        take = max(0, self.available() - leave)
        with self._filler.open("wb") as handle:
            handle.write(b"\0" * take)

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # lazy: a process the test killed may still hold a file open for a moment
        subprocess.run(["umount", "--lazy", str(self.path)], check=True)
