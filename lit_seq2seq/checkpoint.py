"""Checkpoints, all in one place: the weights hash and safe reading, atomic writes (`Seq2SeqCheckpointIO`), when
best.ckpt and last.ckpt are written, the RNG and loop state that make a resume exact (`Seq2SeqCheckpoint`), and what
`--ckpt_path best|last` means in a new process (`resolve`: only within the newest run).

The CLI installs both classes; a checkpoint passed to `--ckpt_path` is read (and checked) once, by `read_checkpoint`.
The two classes subclass Lightning's and are built on first use (module `__getattr__`), so reading a checkpoint
(`Seq2Seq.from_checkpoint`, export) imports torch alone, not Lightning's ~2 s and ~120 MB.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lit_seq2seq.atomic import remove_dead_temporaries, replacing
from lit_seq2seq.runs import RESUMED_FROM, resume_record

if TYPE_CHECKING:
    import lightning as L

WEIGHTS_HASH_KEY = "weights_sha256"
RNG_KEY = "rng_state"
NAMES = ("best", "last")  # --ckpt_path values that name a checkpoint of an earlier run
# A tie on the monitored metric goes to the lower second one: exact match ties at 0 early on hard tasks (and at 1 on
# solved ones), where the token error rate still tells the better weights apart.
TIE_BREAKERS = {"val/exact_match": "val/token_error_rate"}
_VERSION = re.compile(r"version_(\d+)")  # the run folders of the CLI's logger


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinite loss or weights; nothing was saved."""


class SettingError(ValueError):
    """A setting that only fails once the run has its data (the CLI prints it in one line, exit code 2)."""


class CheckpointWriteError(OSError):
    """A checkpoint (or another file of a run) could not be written: a full disk, a read-only or forbidden folder. The
    file it would have replaced, and every other checkpoint, is left as it was. The message is one line naming the file
    and what to do; the CLI prints it and exits with code 1, a training outcome like a non-finite stop."""

    # What a user can do about the write failures a machine commonly gives.
    HINTS = {
        errno.ENOSPC: "free space or pass --trainer.default_root_dir elsewhere",
        errno.EDQUOT: "free space or pass --trainer.default_root_dir elsewhere",
        errno.EROFS: "pass a writable --trainer.default_root_dir",
        errno.EACCES: "pass a writable --trainer.default_root_dir",
        errno.EPERM: "pass a writable --trainer.default_root_dir",
    }

    @classmethod
    def caused_by(cls, error: BaseException, what: str, known_only: bool = False) -> CheckpointWriteError | None:
        """`error`, raised while writing `what` (e.g. "checkpoint <path>"), as one line; None when no OSError caused it
        (a bug, to be raised as it is), or with `known_only` when its errno is not one of HINTS. One already on the
        exception chain wins: it was the first failure (Lightning's CSV logger flushes onto the same full disk after).

        torch.save wraps a failed write to its file object in a RuntimeError ("[enforce fail at inline_container.cc]
        ... unexpected pos") whose __context__ is the OSError (ENOSPC and the like): the cause is found on that chain.
        """
        chain: list[BaseException] = []
        link: BaseException | None = error
        while link is not None and link not in chain:
            chain.append(link)
            link = link.__cause__ or link.__context__
        ours = [e for e in chain if isinstance(e, cls)]
        if ours:
            return ours[0]
        cause = next((e for e in chain if isinstance(e, OSError)), None)
        if cause is None or (known_only and cause.errno not in cls.HINTS):
            return None
        reason = os.strerror(cause.errno).lower() if cause.errno else str(cause)
        hint = cls.HINTS.get(cause.errno, "pass --trainer.default_root_dir elsewhere")
        return cls(f"cannot write {what}: {reason}; {hint}; the earlier checkpoints are intact")


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
    stored = checkpoint.get(WEIGHTS_HASH_KEY)
    if stored is not None and stored != weights_sha256(checkpoint["state_dict"]):
        raise ValueError(
            f"{source}: the weights do not match their saved {WEIGHTS_HASH_KEY}; the checkpoint was altered or damaged"
        )


def _legacy_torch_save(path: Path) -> bool:
    """Whether the file starts as torch.save's legacy format does: a pickle (protocol 2+) of its magic number."""
    with path.open("rb") as file:
        return file.read(2) in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def read_checkpoint(path: str | os.PathLike, flag: str = "--ckpt_path") -> dict[str, Any]:
    """torch.load(weights_only=True) with clear errors for a missing, unreadable, foreign or altered file."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("checkpoints/*.ckpt")) or sorted(path.glob("*.ckpt"))
        hint = f" (it holds {', '.join(str(p) for p in found[:3])})" if found else ""
        raise ValueError(f"{flag} {path}: a folder; give a checkpoint file{hint}")
    if not path.is_file():
        raise ValueError(f"{flag} {path}: no such file")
    unreadable = f"{flag} {path}: cannot be read as a checkpoint (truncated or damaged?)"
    # torch.load skips the zip CRCs, and the weights hash does not cover optimizer or loop state. A file re-saved in
    # torch.save's legacy format (a bare pickle stream, _use_new_zipfile_serialization=False) has no CRCs to check.
    if not _legacy_torch_save(path):
        try:
            with zipfile.ZipFile(path) as archive:
                broken = archive.testzip()
        # BadZipFile, OSError, and for damaged headers also UnicodeDecodeError (a file name that is no longer UTF-8),
        # struct.error, NotImplementedError (an unknown compression method), ...: whatever it is, the file is bad.
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"{unreadable}: {error}") from None
        if broken is not None:
            raise ValueError(f"{flag} {path}: damaged ({broken} fails its CRC check)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - zip and unpickling errors vary; what matters is the file is bad
        if "Weights only load failed" in str(error):  # intact, but pickled objects that only running code would load
            raise ValueError(
                f"{flag} {path}: not a lit-seq2seq checkpoint: it holds Python objects beyond tensors and plain "
                "values (another program's?), which are not loaded: loading them runs code from the file"
            ) from None
        raise ValueError(f"{unreadable}: {error}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ValueError(f"{flag} {path}: not a lit-seq2seq checkpoint (no state_dict or hyper_parameters)")
    check_weights(checkpoint, f"{flag} {path}")
    return checkpoint


def _none_found(name: str, root: Path, hint: str) -> ValueError:
    """No <name>.ckpt where fits write it; a checkpoint elsewhere under `root` is named (a fit with its own
    --checkpoint.filename or logger name ran: best|last cannot know its files)."""
    ours = {f"{n}.ckpt" for n in NAMES}
    found = (p for p in _checkpoint_files(root) if p.name not in ours or p.parent.parent.parent != root)
    other = next(found, None) if root.is_dir() else None
    if other is None:
        return ValueError(f"--ckpt_path {name}: no {name}.ckpt under {root}/*/checkpoints; {hint} or pass a file path")
    if other.parent == root / "checkpoints":  # no version_N folders: every such fit writes there (-v1... after one)
        why = "a fit with --trainer.logger false"
    else:
        why = "a fit with another --checkpoint.filename, dirpath or logger name"
    return ValueError(
        f"--ckpt_path {name}: no {name}.ckpt under {root}/*/checkpoints, where best|last look, but {root} holds "
        f"other checkpoints (written by {why}?), e.g. {other}: pass the file as --ckpt_path"
    )


def _checkpoint_files(root: Path, depth: int = 4) -> Iterator[Path]:
    """*.ckpt files at most `depth` folders below root (Lightning's deepest layout:
    <root>/<name>/version_N/checkpoints/x.ckpt), hidden folders left out: the root may be "." in a home folder."""
    for folder, subfolders, files in os.walk(root):
        level = len(Path(folder).relative_to(root).parts)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".")) if level < depth - 1 else []
        yield from (Path(folder) / f for f in sorted(files) if f.endswith(".ckpt"))


def resolve(name: str, root: str | os.PathLike, subcommand: str) -> Path:
    """`--ckpt_path best|last` in a new process: <name>.ckpt of the newest run under <root>.

    The newest run is the highest <root>/version_N that has a checkpoints folder (a fit creates it when it starts;
    test, validate and predict folders have none). A resumed fit continues an earlier run: its checkpoints folder
    names the checkpoint it started from (RESUMED_FROM), and a file it has not written yet is looked up there, so
    `last` is the newest state of that run and `best` its best. An older run that is not continued by the newest
    is another run, maybe with other settings: its files are never taken silently; the error names them.
    (A new process has no ModelCheckpoint that remembers the file; Lightning would look in the new version folder
    only and, for fit, silently start from scratch.)
    """
    root = Path(root)
    hint = "drop --ckpt_path to start a new fit" if subcommand == "fit" else "run fit first"
    runs = _runs(root)
    if not runs:
        raise _none_found(name, root, hint)
    newest = runs[-1]
    for folder, source in _lineage(runs):
        if (folder / f"{name}.ckpt").is_file():
            return folder / f"{name}.ckpt"
        if name == "last" and source is not None and source.is_file():
            return source  # the run stopped before its first write: its newest state is the one it started from
    others = [run / f"{name}.ckpt" for run in runs if (run / f"{name}.ckpt").is_file()]
    missing = f"--ckpt_path {name}: the newest run, {newest.parent}, has no {name}.ckpt"
    why = "it stopped before writing one"
    if name == "best":  # best.ckpt is written at a validation only
        why = (
            "it validated nothing: it stopped before its first validation, e.g. by --trainer.max_steps, or had no "
            "validation pairs"
        )
        if not others and (newest / "last.ckpt").is_file():  # a fit ran: its own last state is the one to offer
            raise ValueError(f"{missing} ({why}); its last state is --ckpt_path last")
    if not others:
        raise _none_found(name, root, hint)
    raise ValueError(
        f"{missing} ({why}); "
        f"{others[-1].parent.parent} has one but is another run, maybe with other settings: pass "
        f"--ckpt_path {others[-1]} to use it, or {hint}"
    )


def resolved_note(name: str, root: str | os.PathLike, path: Path) -> str:
    """What `--ckpt_path best|last` resolved to, for stderr; naming the other fits under `root` (runs that are not the
    newest one or the runs it resumed), whose files best|last never take: a second fit into one root changes them."""
    runs = _runs(Path(root))
    chain = {folder for folder, _ in _lineage(runs)}
    others = [run / f"{name}.ckpt" for run in runs if run not in chain and (run / f"{name}.ckpt").is_file()]
    if not others:
        return f"--ckpt_path {name}: {path}"
    return (
        f"--ckpt_path {name}: {path}, the newest fit's; {len(others)} other fit(s) under {root} (the latest: "
        f"--ckpt_path {others[-1]})"
    )


def _lineage(runs: list[Path]) -> Iterator[tuple[Path, Path | None]]:
    """The newest run's checkpoints folder, then those of the runs it continues, newest first: each with the file its
    run resumed from (None: a new fit). It ends at a run resumed from a file outside `runs` (no earlier folder to look
    in) or a loop."""
    by_real_path = {run.resolve(): run for run in runs}
    folder, seen = (runs[-1] if runs else None), set()
    while folder is not None and folder not in seen:
        seen.add(folder)
        record = resume_record(folder)
        source = record[0] if record else None
        yield folder, source
        folder = by_real_path.get(source.parent.resolve()) if source is not None else None


def _runs(root: Path) -> list[Path]:
    """The checkpoints folders of the fits under root, oldest first (by version number: the order they started)."""

    def started(folder: Path) -> tuple[int, float]:
        match = _VERSION.fullmatch(folder.parent.name)
        return (int(match[1]) if match else -1, folder.stat().st_mtime)

    return sorted((p for p in root.glob("*/checkpoints") if p.is_dir()), key=started)


def _non_finite(state: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Names of the floating-point tensors holding a NaN or infinity, in nested dicts and lists (optimizer state)."""
    items = state.items() if isinstance(state, Mapping) else enumerate(state) if isinstance(state, list) else ()
    bad = []
    for key, value in items:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not torch.isfinite(value).all():
                bad.append(f"{prefix}{key}")
        elif isinstance(value, (Mapping, list)):
            bad.extend(_non_finite(value, f"{prefix}{key}."))
    return bad


def _handling_non_finite_stop() -> bool:
    """True while a NonFiniteError unwinds (Lightning calls the on_exception hooks from inside its except block)."""
    return isinstance(sys.exc_info()[1], NonFiniteError)


def __getattr__(name: str) -> Any:
    if name in ("Seq2SeqCheckpointIO", "Seq2SeqCheckpoint", "ExactResumeFitLoop", "StopOnSigterm"):
        globals().update(_lightning_classes())
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _lightning_classes() -> dict[str, type]:
    """Seq2SeqCheckpointIO, Seq2SeqCheckpoint, ExactResumeFitLoop and StopOnSigterm, defined here so that Lightning is
    imported only when they are."""
    import lightning as L
    from lightning.fabric.plugins import TorchCheckpointIO
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loops.fit_loop import _FitLoop
    from lightning.pytorch.loops.loop import _Loop
    from lightning.pytorch.utilities import rank_zero_warn

    class ExactResumeFitLoop(_FitLoop):
        """Lightning's fit loop, resuming a checkpoint written at an epoch's end into the next epoch also when
        ``max_steps`` is set.

        Lightning 2.6 marks the loop as restarting whenever ``max_steps`` is set (``_iteration_based_training``), even
        when the checkpoint's epoch was finished (written in ``on_train_epoch_end``). It then re-enters that epoch at
        its last batch: if that batch was no validation batch it trains one batch more (``batch 95/94``, from the next
        epoch's shuffle), and either way it runs the epoch end again and counts an epoch that never trained. Here a
        finished epoch (its counters ready == started == processed, and its last batch reached) starts the next one
        afresh, as Lightning does without ``max_steps``. A checkpoint written when ``max_steps`` stopped a fit before
        the epoch's last batch keeps Lightning's way (the epoch continues).

        And an integer ``val_check_interval`` above an epoch's batches, which Lightning finds only once the data is
        loaded, is a SettingError naming the flag and the count (Lightning raises it with a traceback).
        """

        def setup_data(self) -> None:
            try:
                super().setup_data()
            except MisconfigurationException as error:  # e.g. a limit_train_batches share of less than one batch
                raise SettingError(" ".join(str(error).split())) from None
            except ValueError as error:
                trainer, batches = self.trainer, self.max_batches
                if not (isinstance(trainer.val_check_interval, int) and trainer.val_check_batch > batches):
                    raise
                where = f" in each of the {trainer.world_size} processes" if trainer.world_size > 1 else ""
                raise SettingError(
                    f"--trainer.val_check_interval {trainer.val_check_interval} is more than the {batches} training "
                    f"batches of an epoch{where}: lower it, give a share of an epoch (e.g. 0.5), or count batches "
                    "across epochs with --trainer.check_val_every_n_epoch null"
                ) from error
            self._warn_no_validation_before_max_steps()

        def _warn_no_validation_before_max_steps(self) -> None:
            """A new fit whose --trainer.max_steps comes before its first validation is a fit without validation
            (no metrics, no best.ckpt): said, as data.warn_no_validation says it for a fit without validation pairs."""
            trainer, batches = self.trainer, self.max_batches
            if trainer.max_steps < 0 or trainer.global_step > 0 or not trainer.limit_val_batches:
                return
            if not (math.isfinite(batches) and math.isfinite(trainer.val_check_batch)):
                return
            every, accumulate = trainer.check_val_every_n_epoch, trainer.accumulate_grad_batches
            steps = math.ceil(trainer.val_check_batch / accumulate)  # optimizer steps to the first validation
            if every:  # the first validation lies in epoch `every`, after every step of the epochs before it
                steps += (every - 1) * math.ceil(batches / accumulate)
            if trainer.max_steps < steps:
                rank_zero_warn(
                    f"--trainer.max_steps {trainer.max_steps} ends the fit before its first validation (after "
                    f"{steps} steps): no validation metrics and no best.ckpt; validate sooner with "
                    "--trainer.val_check_interval (a count of batches, or a share of an epoch)"
                )

        @_FitLoop.restarting.setter  # type: ignore[attr-defined]
        def restarting(self, restarting: bool) -> None:
            epoch = self.epoch_progress.current
            finished = epoch.ready == epoch.started == epoch.processed
            stopped_early = finished and not self.epoch_loop.batch_progress.is_last_batch
            restarting = restarting and (not finished or (stopped_early and self._iteration_based_training()))
            _Loop.restarting.fset(self, restarting)

    class Seq2SeqCheckpointIO(TorchCheckpointIO):
        """Writes checkpoints whole or not at all, with the weights hash; reads the `--ckpt_path` file only once.

        Writing: non-finite weights are refused (the previous files stay as they were); the weights hash is added; the
        bytes go to a hidden temporary file beside the target, are fsynced, then os.replace'd onto it. A process killed
        at any moment (SIGKILL, OOM killer, preemption) leaves either the previous complete file or the new complete
        one. (Lightning's own writer stages the bytes in the system temp folder and *moves* them, which is a copy when
        that folder is on another file system.) Remote paths (``s3://`` ...) go through Lightning's writer unchanged.

        Reading: `preload` hands over the checkpoint the CLI already read and checked, so Lightning's restore does not
        read the file again; any other path is read with `read_checkpoint`'s checks.
        """

        def __init__(self) -> None:
            super().__init__()
            self._preloaded: tuple[Path, dict[str, Any]] | None = None

        def preload(self, path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
            self._preloaded = (Path(path).resolve(), checkpoint)

        def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> Any:
            if self._preloaded is not None and "://" not in str(path) and Path(path).resolve() == self._preloaded[0]:
                checkpoint, self._preloaded = self._preloaded[1], None
                return checkpoint
            if "://" in str(path):
                return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
            return read_checkpoint(path)

        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
            if _handling_non_finite_stop():
                # A non-finite stop writes nothing, whoever asks (ModelCheckpoint(save_on_exception=True) would save
                # the diverged weights as best.ckpt and last.ckpt): every checkpoint stays as it was.
                return None
            state = checkpoint["state_dict"]
            bad, what = _non_finite(state), "weights"
            if not bad:  # e.g. Adam's exp_avg_sq overflowed: a resume from it would diverge at its first step
                bad, what = _non_finite(checkpoint.get("optimizer_states", []), "optimizer_states."), "optimizer state"
            if bad:  # raised before anything is written: the previous checkpoint files stay as they were
                raise NonFiniteError(
                    f"non-finite {what} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) after global step "
                    f"{checkpoint.get('global_step')} (epoch {checkpoint.get('epoch')}); not saving them, so the last "
                    "good checkpoint is left as it was. Lower --model.optimizer.lr or check the data."
                )
            checkpoint[WEIGHTS_HASH_KEY] = weights_sha256(state)
            if storage_options is not None or "://" in str(path):
                return super().save_checkpoint(checkpoint, path, storage_options)
            target = Path(path)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with replacing(target) as (tmp,), tmp.open("wb") as f:
                    torch.save(checkpoint, f)
            except (OSError, RuntimeError) as error:  # a full disk or a read-only folder: one line, not a traceback
                write_error = CheckpointWriteError.caused_by(error, f"checkpoint {target}")
                if write_error is None:
                    raise
                raise write_error from error
            return None

    class Seq2SeqCheckpoint(ModelCheckpoint):
        """ModelCheckpoint (same arguments) with best.ckpt holding validated weights and last.ckpt the newest state.

        With a monitored metric and ``save_last=True`` (the CLI's defaults), Lightning 2.6 has three flaws this fixes:

        * last.ckpt is written only together with a top-k save: when the metric did not improve in the final epoch
          it stays an epoch behind, and with ``every_n_train_steps`` nothing is written until the metric exists (the
          whole first epoch, and the first epoch after a resume).
        * with ``every_n_train_steps``, top-k saves happen at those steps, scoring weights that were never validated
          with the metric of an earlier validation.
        * a step save on an epoch's last batch lands before that epoch's validation; Lightning resumes from such a
          checkpoint straight into the next epoch, so that validation (and its best.ckpt) never happens.

        Here best.ckpt (top-k) is considered right after each validation, with its fresh metric; last.ckpt is written
        every ``every_n_train_steps`` steps (except on an epoch's last batch), at every epoch end after its validation,
        after a mid-epoch validation, and when training ends if the newest state is not in it yet. Other settings
        (no monitor, ``save_last`` "link" or false, ``train_time_interval``) keep Lightning's behaviour.

        A resumed fit logs into a new version folder; the best score so far is carried over from the checkpoint, so a
        new best.ckpt is only written when the resumed run beats the run it continues (as an uninterrupted fit would).
        The earlier best.ckpt is left where it is; `--ckpt_path best` picks the newest best.ckpt.

        Exact resume: every checkpoint also holds the global torch RNG (dropout, scheduled sampling draw from it), put
        back at the first training batch after a resume, where an uninterrupted run would have drawn next. (The data
        loaders use their own generators, and the data module saves its position in the epoch.) The trainer's fit loop
        becomes an ExactResumeFitLoop, and when ``max_steps`` ends a fit before an epoch's last batch, last.ckpt is
        written at that batch (a mid-epoch state that resumes where it stopped), not at the epoch end Lightning then
        calls anyway.

        When a fit starts, its checkpoints folder is created (so `resolve` knows a run that died before its first
        write), a resumed fit records there the checkpoint it continues (RESUMED_FROM), and the temporary files of
        writers killed mid-write in this run's and its siblings' checkpoints folders are removed (one line on stderr).
        A fit stopped by a NonFiniteError writes nothing, ``save_on_exception`` or not.

        With ``save_top_k=1`` (the CLI's default) and a monitor in TIE_BREAKERS, a validation that ties the best
        score replaces best.ckpt when its tie-breaker is lower (``val/exact_match`` 0 in every epoch would otherwise
        keep epoch 0's weights, however much the token error rate fell since).
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._last_written_at: tuple[int, str] | None = None  # (global step, hook) of the newest last.ckpt
            self._pending_rng: dict[str, Any] | None = None
            self._best_tie_score: float | None = None  # the tie-breaker's value for best.ckpt's weights
            self._validated_at: int | None = None  # the global step of the newest validation

        @property
        def _tie_breaker(self) -> str | None:
            return TIE_BREAKERS.get(self.monitor or "") if self.save_top_k == 1 else None

        def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
            if super().check_monitor_top_k(trainer, current):
                return True
            if current is None or self._tie_breaker is None or self._best_tie_score is None or not self.best_k_models:
                return False
            tie = self._monitor_candidates(trainer).get(self._tie_breaker)
            best = self.best_k_models[self.kth_best_model_path]
            wins = tie is not None and float(current) == float(best) and float(tie) < self._best_tie_score
            return trainer.strategy.reduce_boolean_decision(wins)  # every rank decides alike, as Lightning's does

        def _update_best_and_save(
            self, current: torch.Tensor, trainer: L.Trainer, monitor_candidates: dict[str, torch.Tensor]
        ) -> None:
            tie = monitor_candidates.get(self._tie_breaker or "")
            self._best_tie_score = None if tie is None else float(tie)  # before the save, so the file holds it
            super()._update_best_and_save(current, trainer, monitor_candidates)

        def state_dict(self) -> dict[str, Any]:
            return super().state_dict() | {"best_tie_score": self._best_tie_score}

        def _format_checkpoint_name(
            self,
            filename: str | None,
            metrics: dict[str, torch.Tensor],
            prefix: str | None = None,
            auto_insert_metric_name: bool = True,
        ) -> str:
            # Lightning writes "{val/loss:.2f}" as "val/loss=0.31": a folder "val" best|last never look in. The
            # inserted name reads val_loss; the value is still the metric's.
            filename = filename or "{epoch}" + self.CHECKPOINT_JOIN_CHAR + "{step}"  # Lightning's default
            if auto_insert_metric_name:
                filename = re.sub(r"\{([^{}:]+)([:}])", lambda m: f"{m[1].replace('/', '_')}={{{m[1]}{m[2]}", filename)
            return super()._format_checkpoint_name(filename, metrics, prefix, False)

        @property
        def state_key(self) -> str:
            # Saved under ModelCheckpoint's key, so checkpoints stay interchangeable with a plain ModelCheckpoint.
            return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

        @property
        def _best_last_rules(self) -> bool:
            return self.monitor is not None and self.save_last is True and self._train_time_interval is None

        @staticmethod
        def _saving(trainer: L.Trainer) -> bool:
            return trainer.state.fn == "fit" and not trainer.sanity_checking and not trainer.fast_dev_run

        @staticmethod
        def _epoch_reached_its_end(trainer: L.Trainer) -> bool:
            """False in the epoch end Lightning runs after max_steps (or a stop) ended the epoch early."""
            progress = trainer.fit_loop.epoch_loop.batch_progress
            return progress.is_last_batch or progress.current.ready >= trainer.num_training_batches

        def _validates_now(self, trainer: L.Trainer) -> bool:
            """Whether a validation follows this training batch (Lightning's own test) whose end writes last.ckpt."""
            loop = trainer.fit_loop
            follows = not self._should_save_on_train_epoch_end(trainer) and loop.epoch_loop._should_check_val_fx(
                loop._data_fetcher
            )
            # rank 0 decides for all: a time-based val_check_interval can differ between ranks, and every rank must
            # take part in a checkpoint write (Lightning's barrier)
            return bool(trainer.strategy.broadcast(follows))

        def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
            super().setup(trainer, pl_module, stage)
            if stage != "fit":
                return
            if type(trainer.fit_loop) is _FitLoop:
                trainer.fit_loop.__class__ = ExactResumeFitLoop  # same state, one setter changed
            if not (trainer.is_global_zero and self._saving(trainer) and self.dirpath and "://" not in self.dirpath):
                return
            folder = Path(self.dirpath)
            folder.mkdir(parents=True, exist_ok=True)  # `resolve` tells a run that died before its first write
            # this run's folder and, in the logger's <root>/version_N/checkpoints layout, those of the earlier runs
            siblings = folder.parent.parent.glob(f"*/{folder.name}") if _VERSION.fullmatch(folder.parent.name) else []
            removed = remove_dead_temporaries([folder, *siblings], "*.ckpt")
            if removed:
                shown = ", ".join(map(str, removed[:3])) + (f" and {len(removed) - 3} more" if len(removed) > 3 else "")
                print(f"removed {len(removed)} unfinished checkpoint write(s) of killed fits: {shown}", file=sys.stderr)

        def _write_last(self, trainer: L.Trainer, hook: str) -> None:
            if self._last_written_at != (trainer.global_step, hook):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
                self._last_written_at = (trainer.global_step, hook)

        def _top_k(self, trainer: L.Trainer) -> None:
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

        def write_last_at_stop(self, trainer: L.Trainer) -> str | None:
            """Write last.ckpt where a fit stops between two batches (StopOnSigterm); its path, or None when this
            callback keeps no last.ckpt (``save_last`` false)."""
            if not self._saving(trainer):
                return None
            if self._best_last_rules:
                self._write_last(trainer, "batch")
            elif self.save_last:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            else:
                return None
            return self.last_model_path or None

        def on_train_batch_end(
            self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            if not self._best_last_rules:
                return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            every = self._every_n_train_steps
            final = 0 <= trainer.max_steps <= trainer.global_step  # max_steps ends the fit at this batch
            if not (self._saving(trainer) and (final or (every >= 1 and trainer.global_step % every == 0))):
                return None
            if batch_idx + 1 == trainer.num_training_batches:
                return None  # the epoch end, right after this epoch's validation, writes it
            if self._validates_now(trainer):
                # on_validation_end writes it right after. Written here too, a kill during that validation would
                # resume past it (Lightning skips the validation of the batch a step save was made at).
                return None
            self._write_last(trainer, "batch")
            return None

        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if not trainer.sanity_checking:
                self._validated_at = trainer.global_step
            if not self._best_last_rules:
                return super().on_validation_end(trainer, pl_module)
            if self._saving(trainer) and not self._should_save_on_train_epoch_end(trainer):
                # a validation that is not followed by this epoch's end (val_check_interval < 1, and the like)
                self._top_k(trainer)
                self._write_last(trainer, "validation")
            return None

        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if not self._best_last_rules:
                return super().on_train_epoch_end(trainer, pl_module)
            if not self._saving(trainer):
                return None
            if not self._epoch_reached_its_end(trainer):
                # max_steps (or a stop) ended the epoch early: last.ckpt was written at that batch or validation, in
                # a state that resumes mid-epoch; written here it would resume into the next epoch. A stop
                # (max_time, early stopping) is validated first, though: that metric belongs to these weights.
                if self._validated_at == trainer.global_step and self._should_save_on_train_epoch_end(trainer):
                    self._top_k(trainer)
                return None
            every = self.every_n_epochs
            if self._should_save_on_train_epoch_end(trainer) and (
                every < 1 or (trainer.current_epoch + 1) % every == 0
            ):
                self._top_k(trainer)  # this epoch's validation just ran: its metric belongs to these weights
            self._write_last(trainer, "epoch")
            return None

        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if not self._best_last_rules:
                return super().on_train_end(trainer, pl_module)
            if self._saving(trainer) and (
                self._last_written_at is None or self._last_written_at[0] != trainer.global_step
            ):
                self._write_last(trainer, "end")  # e.g. a stop (trainer.should_stop) between validations
            return None

        def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
            if isinstance(exception, NonFiniteError):
                return None  # never save diverged weights (save_on_exception would, as best.ckpt and last.ckpt)
            return super().on_exception(trainer, pl_module, exception)

        def on_save_checkpoint(
            self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
        ) -> None:
            checkpoint[RNG_KEY] = {"cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                checkpoint[RNG_KEY]["cuda"] = torch.cuda.get_rng_state_all()

        def on_load_checkpoint(
            self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
        ) -> None:
            self._pending_rng = checkpoint.get(RNG_KEY)
            source, folder = trainer.ckpt_path, Path(self.dirpath or "")
            if trainer.is_global_zero and self._saving(trainer) and source and "://" not in f"{source}{folder}":
                # this fit continues the run of that checkpoint: `resolve` follows it there, the report takes
                # that run's curves up to the step
                with replacing(folder / RESUMED_FROM) as (marker,):
                    marker.write_text(f"{Path(source).resolve()}\nglobal_step {checkpoint.get('global_step', '')}\n")

        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
            if self._pending_rng is not None:
                torch.set_rng_state(self._pending_rng["cpu"])
                if "cuda" in self._pending_rng and torch.cuda.is_available():
                    torch.cuda.set_rng_state_all(self._pending_rng["cuda"])
                self._pending_rng = None

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            same_dir = state_dict.get("dirpath", self.dirpath) == self.dirpath
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The dirpath has changed")
                super().load_state_dict(state_dict)
            if state_dict.get("monitor") == self.monitor:  # None from older checkpoints: ties keep the earlier
                self._best_tie_score = state_dict.get("best_tie_score")
            if not same_dir and self.monitor is not None and state_dict.get("monitor") == self.monitor:
                # Carry the scores over: best_k_models still names the files in the old folder, which Lightning
                # never deletes (they are outside this callback's dirpath).
                self.best_model_score = state_dict["best_model_score"]
                self.best_k_models = dict(state_dict.get("best_k_models", {}))
                self.kth_best_model_path = state_dict.get("kth_best_model_path", "")
                self.kth_value = state_dict.get("kth_value", self.kth_value)

    class StopOnSigterm(L.Callback):
        """SIGTERM (`kill`, `timeout`, a scheduler's preemption) stops a fit at the end of a training batch, in every
        process at the same batch, after each Seq2SeqCheckpoint wrote last.ckpt there: ``--ckpt_path last`` goes on
        exactly. A batch that ends an epoch, that a validation follows or that only accumulates gradients lets those
        run first (the first two write last.ckpt themselves; gradients half accumulated are in no checkpoint), and a
        later batch stops.

        The processes agree by one all-reduce of a flag per batch, at a point each reaches: Lightning's handler,
        replaced for the fit, broadcast from inside the signal handler and killed the other processes (under DDP they
        died of a gloo error or hung), and in one process it stopped with exit code 0 and no checkpoint. validate,
        test and predict keep Lightning's handler (their processes may run different numbers of batches).
        """

        def __init__(self) -> None:
            self._received = False

        def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
            if stage == "fit":
                self._received = False
                # Lightning registers its handlers after the setup hooks, reading this attribute then
                trainer._signal_connector._sigterm_notifier_fn = self._note

        def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
            if stage == "fit":  # a test on the same trainer gets Lightning's handler back
                vars(trainer._signal_connector).pop("_sigterm_notifier_fn", None)

        def _note(self, signum: int, frame: Any) -> None:
            self._received = True

        def on_train_batch_end(
            self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            stop = self._received
            if trainer.world_size > 1:
                stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            if not stop:
                return
            loop = trainer.fit_loop  # (the same answers in every process: rank 0's for the validation)
            if batch_idx + 1 == trainer.num_training_batches or loop.epoch_loop._should_accumulate():
                return
            if trainer.strategy.broadcast(bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))):
                return
            written = [
                c.write_last_at_stop(trainer) for c in trainer.checkpoint_callbacks if isinstance(c, Seq2SeqCheckpoint)
            ]
            paths = [p for p in written if p]
            if trainer.is_global_zero:
                where = (
                    f"written to {', '.join(paths)} (the fit goes on from there with --ckpt_path last)"
                    if paths
                    else "no last.ckpt written (--checkpoint.save_last is false)"
                )
                print(f"SIGTERM: stopped after step {trainer.global_step}, {where}", file=sys.stderr, flush=True)
            raise SIGTERMException

    classes = {
        "Seq2SeqCheckpointIO": Seq2SeqCheckpointIO,
        "Seq2SeqCheckpoint": Seq2SeqCheckpoint,
        "ExactResumeFitLoop": ExactResumeFitLoop,
        "StopOnSigterm": StopOnSigterm,
    }
    for name, cls in classes.items():
        cls.__qualname__ = name  # importable (and picklable) as lit_seq2seq.checkpoint.<name>
    return classes
