"""Whether the process that left a file behind still runs: leftovers of killed writers (checkpoints, exports,
reports) carry their writer's pid in their names, and only a dead writer's are cleaned up."""

from __future__ import annotations

import os


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
