"""Atomic file writes: a writer fills hidden temporaries beside its targets (`.NAME.PID.tmp`) and moves them into
place with os.replace, so a reader finds the old file or the whole new one, never a half-written one. The pid in
the name tells the leftovers of a killed writer (removed by the next writer) from those of one still running."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def temporary_for(path: Path) -> Path:
    """The hidden temporary this process writes `path` through."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def replacing(*paths: Path, fsync: bool = True) -> Iterator[list[Path]]:
    """The temporaries of `paths`, for the block to write. When the block ends without an exception they are
    fsynced (unless `fsync` is false: a cache that can be rebuilt) and moved onto the paths in order; on an exception
    they are removed. A failure before the first move leaves every path as it was."""
    temporaries = [temporary_for(Path(p)) for p in paths]
    try:
        yield temporaries
        if fsync:
            for tmp in temporaries:
                with open(tmp, "rb+") as f:  # writable: Windows refuses to fsync a read-only handle
                    os.fsync(f.fileno())
        for tmp, path in zip(temporaries, paths, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)


def remove_dead_temporaries(folders: Iterable[Path], names: str) -> list[Path]:
    """Remove the temporaries in `folders` of killed writers of files matching the glob `names` ("*.ckpt"); returns
    them. Those of live processes (another fit writing into the same folder right now) are left alone."""
    removed = []
    for folder in dict.fromkeys(Path(f) for f in folders):
        for path in sorted(folder.glob(f".{names}.*.tmp")):
            match = _TEMPORARY.match(path.name)
            if match is None or pid_alive(int(match["pid"])):
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def pid_alive(pid: int) -> bool:
    """True if a process with this pid runs on this machine (or may: another user's, or an impossible pid)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only the existence and permission checks
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or a pid no process can have: keep its files
        return True
    return True
