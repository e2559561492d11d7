"""The record a resumed fit leaves in its checkpoints folder, read without torch (by `resolve` and the report)."""

from __future__ import annotations

from pathlib import Path

# Where a run goes without --trainer.default_root_dir (Lightning's own default folder, not the current one: repeated
# fits there would scatter version_N folders and their config.yaml among the user's files)
DEFAULT_ROOT_DIR = "lightning_logs"

# Written by a resumed fit into its checkpoints folder: the checkpoint it continues, then `global_step N` (how
# `resolve` follows a run across the version folders of its resumes, and the report the curves before the resume).
RESUMED_FROM = "resumed_from"


def resume_record(checkpoints: Path) -> tuple[Path, int | None] | None:
    """(checkpoint, its global step) of the RESUMED_FROM file in `checkpoints` (the step None in records written
    before it was added). None: a new fit, or no record."""
    try:
        lines = (checkpoints / RESUMED_FROM).read_text().splitlines()
    except OSError:
        return None
    if not lines or not lines[0].strip():
        return None
    step = lines[1].removeprefix("global_step ").strip() if len(lines) > 1 else ""
    return Path(lines[0].strip()), int(step) if step.isdigit() else None
