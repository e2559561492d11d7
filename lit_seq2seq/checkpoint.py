"""Checkpoint integrity: a sha256 of the weights stored in every checkpoint, and safe, checked loading."""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

HASH_KEY = "weights_sha256"


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of every tensor, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_weights(checkpoint: Mapping[str, Any], source: str) -> None:
    """Raise ValueError if the checkpoint's weights do not match the hash saved with them."""
    stored = checkpoint.get(HASH_KEY)
    if stored is not None and stored != weights_sha256(checkpoint["state_dict"]):
        raise ValueError(
            f"{source}: the weights do not match their saved {HASH_KEY}; the checkpoint was altered or damaged"
        )


def read_checkpoint(path: str | os.PathLike, flag: str = "--ckpt_path") -> dict[str, Any]:
    """torch.load(weights_only=True) with clear errors for a missing, unreadable, foreign or altered file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{flag} {path}: no such file")
    # torch.load skips the zip CRCs, and the weights hash does not cover optimizer or loop state.
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{flag} {path}: cannot be read as a checkpoint (truncated or damaged?): {error}") from None
    if broken is not None:
        raise ValueError(f"{flag} {path}: damaged ({broken} fails its CRC check)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - zip and unpickling errors vary; what matters is the file is bad
        raise ValueError(f"{flag} {path}: cannot be read as a checkpoint (truncated or damaged?): {error}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ValueError(f"{flag} {path}: not a lit-seq2seq checkpoint (no state_dict or hyper_parameters)")
    check_weights(checkpoint, f"{flag} {path}")
    return checkpoint
