"""Seq2SeqCLI: the LightningCLI behind `lit-seq2seq fit|validate|test|predict` (the entry point is cli.py)."""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import inspect
import logging
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
from jsonargparse import Namespace
from jsonargparse._actions import _ActionPrintConfig  # private: tests/test_lightning_private.py guards it
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_info
from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import DeviceStatsMonitor, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.strategies import StrategyRegistry

from lit_seq2seq import checkpoint, install_hint
from lit_seq2seq.callbacks import LogProgress, PredictionWriter
from lit_seq2seq.checkpoint import NonFiniteError, Seq2SeqCheckpoint, Seq2SeqCheckpointIO, read_checkpoint
from lit_seq2seq.cli import DATA_TO_NET, LIGHTNING_COMMANDS, linked_setting
from lit_seq2seq.data import Seq2SeqDataModule, warn_no_validation
from lit_seq2seq.model import upgrade_hparams
from lit_seq2seq.module import EPOCH_METRICS, Seq2SeqModule
from lit_seq2seq.pairs import FIT_TEXT_FROM, PairDataModule, overridden_note
from lit_seq2seq.runs import DEFAULT_ROOT_DIR, RESUMED_FROM
from lit_seq2seq.search import TYPE_WORDS
from lit_seq2seq.tasks import check_memory
from lit_seq2seq.text import TEXT_KEY, Tokenizer

# The sizes the data decides, linked into the net's config: a YAML never states them twice.
# The data module of a config without a class_path (generated tasks); lit_seq2seq.pairs.PairDataModule reads files.
DEFAULT_DATA = f"{Seq2SeqDataModule.__module__}.{Seq2SeqDataModule.__qualname__}"
# --ckpt_path values Lightning resolves itself (not files).
LIGHTNING_CKPT_NAMES = ("hpc", "registry")
# Data settings a fit may change when it resumes: fit does not use them, or they do not change what it trains on.
RESUMABLE_DATA_CHANGES = ("test_size", "predict_size", "num_workers", "test_file", "predict_file", "cache")
PATH_FLAGS = ("file", "train_file", "val_file")  # the pair files a resumed fit keeps (its --data.* flags)
_TEXT_DEFAULTS = {  # PairDataModule's, read from its signature
    name: inspect.signature(PairDataModule).parameters[name].default
    for name in ("source_tokenizer", "target_tokenizer", "source_lowercase", "target_lowercase")
}


class Seq2SeqArgumentParser(LightningArgumentParser):
    """Dumps (--print_config, a run's config.yaml) the default data module's settings as `data: {task: ...}`, as
    before the pair data module existed: configs, tests and scripts reading `config["data"]["task"]` keep working, and
    the file parses back to the same config (a `data:` without class_path is the default class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # argparse takes a unique prefix for the whole flag: `--trainer.max_epoch 3` set max_epochs without a word.
        super().__init__(*args, **({"allow_abbrev": False} | kwargs))

    def dump(self, *args: Any, **kwargs: Any) -> str:
        return _flatten_default_data(super().dump(*args, **kwargs))

    settled = ""  # once the command line has parsed: "lit-seq2seq SUBCOMMAND", and errors are about settings or data
    command = ""  # the subcommand the arguments name (Seq2SeqCLI sets it), for the top parser's messages
    configs: tuple[str, ...] = ()  # the --config files given (Seq2SeqCLI sets them): where an untyped key came from
    typed: frozenset[str] = frozenset()  # the flags typed on the command line (Seq2SeqCLI sets them)

    def error(self, message: str, *args: Any, **kwargs: Any) -> NoReturn:
        optimizer = _optimizer_message(message)
        message = optimizer or message
        built = ""  # a class flag's own problem (_class_problem), named in one line
        # --data NAME of no class: jsonargparse's "Expected a dot import path string: NAME", or its Union text
        no_class = message.startswith('Parser key "data"') and (
            re.search(r"Expected a dot import path string: (\S+)", message)
            or re.search(r"class_path '([\w.]+)':\s+(?:module '[\w.]+' has no attribute|No module named)", message)
        )
        if no_class:
            message = (
                f"--data {no_class.group(1)}: no such class (PairDataModule for pair files, Seq2SeqDataModule for "
                "generated tasks, or the import path of a LightningDataModule)"
            )
        # jsonargparse words an unknown --data.* key as "Parser key "data": Does not validate against any of the Union
        # subtypes ..." with the key only in a nested line; name the flag first, as for any other unknown flag.
        unknown = message.startswith('Parser key "data"') and re.search(
            r"Problem with given class_path '([\w.]+)':\s+Option '([\w-]+)' is not accepted", message
        )
        if unknown:
            name, key = unknown.groups()
            message = f"--data.{key}: {name} has no such option (its options: lit-seq2seq fit --data.help {name})"
            if f"--data.{key}" not in self.typed and self.configs:  # a misspelt key of a YAML file, not a flag
                message = f"{', '.join(self.configs)}: the key {key} under data: " + message.split(": ", 1)[1]
            if name.endswith("Seq2SeqDataModule") and key in inspect.signature(PairDataModule).parameters:
                # `--data.test_file F --data PairDataModule`: jsonargparse reads the flags in order
                message += "; it is a PairDataModule option: give --data PairDataModule before the --data.* flags"
            if key == "class_path":  # a class's arguments beside its class_path, not under init_args
                message = "data: the arguments of a class_path go under init_args (class_path: ..., init_args: {...})"
        # Our data module's own checks (a ValueError naming the flags) come wrapped the same way, under the subtypes
        # it tried and the whole Namespace; the check's message is the one a user needs.
        ours = re.search(r"Errors:\n\s*- (.+?)\n\s*- Expected a <class 'NoneType'>", message)
        union = "Does not validate against any of the Union subtypes" in message
        parser_key = re.match(r'Parser key "([\w.]+)"', message)
        # (no key: raised while the data module was instantiated)
        data = parser_key is None or parser_key.group(1) == "data"
        if union and ours and (data or not self.exit_on_error):  # (a nested parser's message: the data module's)
            message = ours.group(1)
        # Any other Union-typed flag (--trainer.max_epochs: int | None, --trainer.precision: four Literals | None)
        # lists its subtypes; one line naming the flag and what it accepts instead.
        other = (
            union
            and self.exit_on_error
            and re.search(
                r"^Parser key \"([\w.]+)\":.*?\n\s*Subtypes: \[([^\n]*)\]\n.*Given value: (.*)$", message, re.DOTALL
            )
        )
        if other and not data:
            key, subtypes, value = other.groups()
            built = _class_problem(key, message)
            message = built or f"--{key} must be {_union_expected(subtypes)}, got {value}"
        elif union and parser_key is None and re.search(r"class_path '[\w.]*\.loggers\.", message):
            built = _class_problem("trainer.logger", message)  # raised building it, after parsing
            message = built or message
        # A value of the wrong type: "Parser key "K":\n Expected a <class 'int'>. Got value: V", for --data.* nested
        # in the Union text above, and printed after ~90 lines of usage. One line naming the flag instead.
        wrong = self.exit_on_error and re.search(
            r"Parser key \"([\w.]+)\":\s+Expected (.+?)\. Got value: (.*)", message
        )
        if wrong:  # (the top parser's: a nested one's message is wrapped in the top one's, which reads it there)
            key, expected, value = wrong.groups()
            flag = f"--data.{key}" if message.startswith('Parser key "data"') else f"--{key}"
            message = f"{flag} must be {_expected(expected)}, got {value}"
        # An optional (X | None) --data.* value words it without the key, which the Union text's last line gives
        optional = self.exit_on_error and re.search(
            r"class_path '[\w.]+':\s+Expected (.+?)\n.*NestedArg\(key='(\w+)', val=(.*)\)$", message, re.DOTALL
        )
        if optional and message.startswith('Parser key "data"'):
            expected, key, value = optional.groups()
            message = f"--data.{key} must be {_expected(expected)} or null, got {value.strip(chr(39))}"
        # A size linked from the data, given as a flag: jsonargparse names a --data.* key that does not exist.
        linked = self.exit_on_error and re.search(r'Linked "model\.net\.(\w+)" must be given via', message)
        if linked:
            message = f"--{linked_setting(linked.group(1))}"
        optimizer = optimizer or _optimizer_message(message)  # (a wrong type: its words are composed above)
        message = optimizer or message
        message += _ambiguous_hint(message) + _dashed_hint(message, set(self._option_string_actions))
        prog = self.settled or self.prog.replace(" [options]", "")
        # An unknown key in a --config file: the top parser says so about the subcommand, after its ~90-line usage.
        unknown_key = self.exit_on_error and re.fullmatch(r"Subcommand '(\w+)' does not accept option '(.+)'", message)
        if unknown_key:
            command, key = unknown_key.groups()
            prog = f"{prog.split()[0]} {command}"
            message = (
                f"no option {key} (a key of a --config file, or of a dict given to a flag; {prog} --help lists them)"
            )
        if (optimizer or built) and self.exit_on_error and prog.split()[-1] not in LIGHTNING_COMMANDS:  # the top's
            prog = f"{prog.split()[0]} {self.command}".strip()
            print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
            sys.exit(2)
        if self.exit_on_error and prog.split()[-1] in LIGHTNING_COMMANDS:  # a subcommand's usage is ~90 lines
            help_hint = "" if self.settled or "help" in message else f" ({prog} --help lists the options)"
            if help_hint and "--data." in message:  # --help lists the data module's class, not its options
                modules = "PairDataModule, or Seq2SeqDataModule for generated tasks,"
                help_hint = f" ({prog} --data.help {modules} lists them)"
            print(f"{prog}: error: {message}{help_hint}", file=sys.stderr, flush=True)
            sys.exit(2)
        super().error(message, *args, **kwargs)


def _dashed_hint(message: str, known: set[str]) -> str:
    """A hint for an unknown flag spelt with dashes (--data.train-file): LightningCLI's flags are Python names, with
    underscores; export and decode take both spellings, so the dashed one is a natural guess here. Given when the
    underscored flag exists: one of `known`, a data module's argument, or an optimizer's or schedule's (its class
    decides; jsonargparse names the key it lacks, not the ones it has)."""
    dashed = re.search(r"--[\w.]*\w-[\w.-]*", message)
    if dashed is None or not re.search(r"unrecognized arguments|no such option", message):
        return ""
    flag = "--" + dashed.group()[2:].replace("-", "_")
    data = {
        f"--data.{name}"
        for module in (PairDataModule, Seq2SeqDataModule)
        for name in inspect.signature(module).parameters
    }
    if flag in known or flag in data or flag.startswith(("--model.optimizer.", "--model.lr_scheduler.")):
        return f"; flags are spelt with underscores: {flag}"
    return ""


OPTIMIZER_CLASSES = {  # what the two flags take by a short name
    "--model.optimizer": "a class of torch.optim, e.g. Adam or AdamW",
    "--model.lr_scheduler": "a class of torch.optim.lr_scheduler, e.g. StepLR or OneCycleLR",
}


def _optimizer_message(message: str) -> str | None:
    """A --model.optimizer / --model.lr_scheduler error in jsonargparse's words (the class's whole Namespace, the
    Callable type, the setting's key left out) -> one line naming the setting, or None for any other error."""
    group = re.search(r'(?:--|Parser key ")model\.(optimizer|lr_scheduler)\b', message)
    # (a value of the wrong type names the bare key, "--betas must be ...", with the class's Namespace)
    chosen = re.search(r"Namespace\(class_path='torch\.optim\.(lr_scheduler\.)?", message)
    if group is None and chosen is None:
        return None
    flag = f"--model.{group.group(1) if group else 'lr_scheduler' if chosen.group(1) else 'optimizer'}"
    given = re.search(r"Namespace\(class_path='((?!typing\.)[\w.]+)', init_args=Namespace\((.*?)\)\)", message)
    loose = re.search(r"NestedArg\(key='(\w+)', val='(.*?)'\)", message)
    if loose and not given:
        key, value = loose.groups()
        return f"{flag}.{key} {value}: no {flag} class is chosen to take it; give {flag} CLASS first"
    typed = re.search(r'Parser key "(\w+)":\s+Expected (.+?)\. Got value: (.*?)\. Got value: Namespace', message)
    if typed and given:  # a value of the wrong type for the chosen class's argument
        key, expected, value = typed.groups()
        return f"{flag}.{key} must be {_expected(expected)}, got {value} ({given.group(1)})"
    unknown = re.search(r"Option '([\w-]+)' is not accepted", message)
    if unknown and given:
        return f"{flag}.{unknown.group(1)}: {given.group(1)} has no such option"
    wrong = re.search(r"must be (.+?), got (.+?)\. Got value:", message)
    if wrong and given:
        expected, value = wrong.groups()
        key = re.search(rf"(\w+)={re.escape(repr(value))}", given.group(2))
        if key:
            return f"{flag}.{key.group(1)} must be {expected}, got {value} ({given.group(1)})"
    if given:  # a required argument left out: jsonargparse fills it with None and refuses the class
        try:
            module, _, name = given.group(1).rpartition(".")
            parameters = inspect.signature(getattr(importlib.import_module(module), name)).parameters
        except (ImportError, AttributeError, ValueError):
            return None
        required = {k for k, parameter in parameters.items() if parameter.default is inspect.Parameter.empty}
        missing = [k for k in re.findall(r"(\w+)=None", given.group(2)) if k in required]
        if missing:
            needed = ", ".join(f"{flag}.{k}" for k in missing)
            return f"{flag} {given.group(1)} needs {needed} (no default)"
    # a class name that resolves to nothing: jsonargparse lists its failed readings (a path, an import path)
    nowhere = re.search(r"Expected a path but ([\w.]+) either not accessible or invalid", message)
    if nowhere and not given:
        name = nowhere.group(1)
        shared = _ambiguous_hint(f", got {name}")  # a short name two loaded classes share (ReduceLROnPlateau)
        if shared:
            return f"{flag} must be one class, got {name}{shared}"
        return f"{flag} {name}: no such class ({OPTIMIZER_CLASSES[flag]}, or an import path)"
    return None


def _expected(jsonargparse_type: str) -> str:
    """jsonargparse's "a <class 'int'>" / "a typing.Literal['char', 'space']" / "a tuple with 3 elements" in words."""
    literal = re.fullmatch(r"a typing\.Literal\[(.*)\]", jsonargparse_type)
    if literal:
        return "one of " + ", ".join(v.strip(" '\"") for v in literal.group(1).split(","))
    plain = re.fullmatch(r"a <class '(\w+)'>", jsonargparse_type)
    return TYPE_WORDS.get(plain.group(1), f"a {plain.group(1)}") if plain else jsonargparse_type


class _Terminated(BaseException):
    """SIGTERM outside a Lightning run (flags read, pair files loaded, ...). A BaseException, as KeyboardInterrupt is:
    no `except Exception` on the way takes it for an error of its own."""


@contextmanager
def stopped_by_sigterm(prog: str) -> Iterator[None]:
    """SIGTERM (`kill`, `timeout`, `docker stop`, a scheduler's preemption) ends the command with one line and exit
    code 143, as a shell reports a process that SIGTERM ended, in every process of a DDP run.

    During a fit, checkpoint.StopOnSigterm takes the signal and stops at a batch end with Lightning's
    SIGTERMException (a SystemExit of code 0); validate/test raise it from Lightning's own handler. Outside a run the
    handler installed here stops at once. Lightning composes it into its own during a run, where it does nothing,
    but in predict, whose loop never looks at Lightning's flag (the signal was ignored): it stops at once there too,
    and predictions.tsv is not written (PredictionWriter writes it whole or not at all).
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if signal.getsignal(signal.SIGTERM) is handler or prog.endswith(" predict"):  # no run, or predict's
            raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except (_Terminated, SIGTERMException):
        if os.environ.get("LOCAL_RANK", "0") == "0":  # DDP's other processes stop with it, silently
            print(f"{prog}: stopped by SIGTERM", file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raised_in_lightning(error: BaseException) -> bool:
    """Whether `error` was raised by Lightning's own code (its check of a flag's value), not by ours."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and f"{os.sep}lightning{os.sep}" in frames[-1].filename


def _ambiguous_hint(message: str) -> str:
    """For "..., got NAME" where NAME is a bare class name that several loaded classes share (ReduceLROnPlateau:
    torch's and Lightning's; EMAWeightAveraging: Lightning's and ours), which jsonargparse refuses as a wrong type:
    the full paths to choose from."""
    got = re.search(r", got (\w+)$", message)
    if got is None or got.group(1) in vars(builtins) or got.group(1) == "NoneType":  # a value's type, not a class
        return ""
    seen, stack, paths = set(), [object], set()
    while stack:  # every loaded class: this runs once, on the way out with an error
        cls = stack.pop()
        for sub in type.__subclasses__(cls):
            if sub not in seen:
                seen.add(sub)
                stack.append(sub)
                public = not any(part.startswith("_") for part in f"{sub.__module__}.{sub.__qualname__}".split("."))
                if sub.__name__ == got.group(1) and public:
                    paths.add(f"{sub.__module__}.{sub.__qualname__}")
    if len(paths) < 2:
        return ""
    return f" ({got.group(1)} names {len(paths)} classes: give the full path, {' or '.join(sorted(paths))})"


def _union_expected(subtypes: str) -> str:
    """jsonargparse's "<class 'int'>, typing.Literal['a', 'b'], <class 'NoneType'>" (a Union's subtypes) in words:
    "an integer, one of a, b or null". The values of several Literals are one list; a subtype not read here (a
    class of Lightning's, an Iterable[...]) is named as jsonargparse names it."""
    words, values, null = [], [], False
    for part in _top_level(subtypes):
        literal = re.fullmatch(r"typing\.Literal\[(.*)\]", part)
        plain = re.fullmatch(r"<class '(\w+)'>", part)
        if literal:
            values += [v for v in (v.strip(" '\"") for v in literal.group(1).split(",")) if v not in values]
        elif plain and plain.group(1) == "NoneType":
            null = True
        else:  # <class 'lightning.pytorch.loggers.logger.Logger'> -> Logger, a.b.Iterable[c.D] -> Iterable[D]
            part = re.sub(r"(?:\w+\.)+(\w+)", r"\1", re.sub(r"<class '([\w.]+)'>", r"\1", part))
            words.append(_expected(f"a <class '{part}'>") if plain else part)
    if values:
        words.append("one of " + ", ".join(values))
    words += ["null"] if null else []
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _top_level(text: str) -> list[str]:
    """`text` split at its commas outside brackets: "A, B[C, D]" -> ["A", "B[C, D]"]."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return [*parts, text[start:].strip()]


def _flatten_default_data(text: str) -> str:
    """YAML `data:` / `  class_path: DEFAULT_DATA` / `  init_args:` / `    key: v`... -> `data:` / `  key: v`."""
    lines = text.split("\n")
    head = ["data:", f"  class_path: {DEFAULT_DATA}", "  init_args:"]
    for i in range(len(lines) - 2):
        if lines[i : i + 3] == head:
            end = i + 3
            while end < len(lines) and lines[end].startswith("    "):
                end += 1
            return "\n".join([*lines[: i + 1], *(line[2:] for line in lines[i + 3 : end]), *lines[end:]])
    return text


CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"
LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")


def _counts_before_shares(parser: LightningArgumentParser) -> None:
    """--trainer.limit_*_batches 1 is one batch. The Trainer types them float | int | None and jsonargparse takes the
    first type that accepts a value, so "1" became 1.0: the whole epoch (an int counts batches, a float is a
    share). Read as int | float | None, an integer stays an int and "1.0" or "0.5" a share. (jsonargparse's
    ActionTypeHint keeps the type in `_typehint`; without it, Lightning's reading stands.)"""
    for action in parser._actions:
        if action.dest.removeprefix("trainer.") in LIMITS and hasattr(action, "_typehint"):
            action._typehint = int | float | None


def _device_flags(trainer: Namespace) -> str:
    return ", ".join(f"--trainer.{k} {trainer.get(k)}" for k in ("accelerator", "devices", "strategy"))


def _flags_named_in(message: str, config: Namespace) -> str:
    """The --trainer.* / --checkpoint.* flags a Lightning message names by their argument (`max_epochs`,
    limit_train_batches, Timer(duration=...) for max_time), with their values; "" when it names none."""
    words = set(re.findall(r"\b\w+\b", message)) | ({"max_time"} if "Timer(duration=" in message else set())
    flags = [
        f"--{group}.{key} {config[group].get(key)}"
        for group in ("trainer", "checkpoint")
        if isinstance(config.get(group), Namespace)
        for key in vars(config[group])
        if (key in words and "_" in key) or f"`{key}`" in message  # a lone word ("mode") only where quoted
    ]
    return ", ".join(flags)


# Lightning's loggers whose package is an install of its own (their classes refuse to start without it, and
# jsonargparse reports that as a value of the wrong type): class name -> (module, pip package)
LOGGER_PACKAGES = {
    "TensorBoardLogger": ("tensorboard", "tensorboard"),
    "WandbLogger": ("wandb", "wandb"),
    "MLFlowLogger": ("mlflow", "mlflow"),
    "CometLogger": ("comet_ml", "comet-ml"),
    "NeptuneLogger": ("neptune", "neptune"),
}


def _class_problem(key: str, message: str) -> str:
    """A flag given a class that jsonargparse could not build (--trainer.logger TensorBoardLogger: its save_dir is
    required, or its package is not installed), reported among a Union's subtypes: one line with the reason, or ""."""
    found = re.search(r"Problem with given class_path '[\w.]*?(\w+)':\s*\n\s*(.+)", message)
    if found is None:
        return ""
    name, reason = found.groups()
    module, package = LOGGER_PACKAGES.get(name, (None, None))
    missing = module is not None and importlib.util.find_spec(module) is None
    if missing and not (module == "tensorboard" and importlib.util.find_spec("tensorboardX")):  # Lightning takes either
        reason = f"needs the {package} package: pip install {package}"
    elif "arguments are required: " in reason:
        first = reason.split("arguments are required: ", 1)[1].split(",")[0].strip()
        reason = f"{reason} (--{key}.{first} VALUE)"
    return f"--{key} {name}: {reason}"


SEED_RANGE = (0, 2**32 - 1)  # numpy's: Lightning's seed_everything raises a traceback outside it
HALF_WEIGHTS = ("16-true", "bf16-true")  # precisions that store the weights themselves in 16 bits


def _spawning(strategy: Any) -> str | None:
    """The start method of a DDP strategy that starts its processes from this one (spawn, fork): None for others.
    Lightning hands such a fit's weights back to this process through a temporary file of bare weights, which the
    checkpoint IO (hashed, checked checkpoints) does not take."""
    if isinstance(strategy, str):
        found = dict.get(StrategyRegistry, strategy, {})  # (the registry's own get() builds the strategy)
        start = found.get("init_params", {}).get("start_method")
    elif isinstance(strategy, Namespace) and str(strategy.get("class_path", "")).endswith("DDPStrategy"):
        start = (strategy.get("init_args") or Namespace()).get("start_method")
    else:
        start = None
    return start if start in ("spawn", "fork", "forkserver") else None


def _check_trainer(trainer: Namespace, subcommand: str | None, error: Callable[[str], NoReturn]) -> None:
    """`error(message)` for --trainer.* values that Lightning takes without a word or fails on inside the run (a
    traceback, a modulo by zero, files half written), or that lit-seq2seq cannot honour."""
    # Values Lightning takes without a check: a negative clip value turns clipping off without a word.
    if trainer.gradient_clip_val is not None and trainer.gradient_clip_val < 0:
        error(f"--trainer.gradient_clip_val must be >= 0 or null, got {trainer.gradient_clip_val}")
    # Each a modulo by zero inside the run (ours at the first step, Lightning's at an epoch end).
    for flag in ("accumulate_grad_batches", "log_every_n_steps", "check_val_every_n_epoch"):
        value = trainer.get(flag)
        if value is not None and value < 1:
            null = " or null" * (flag == "check_val_every_n_epoch")
            error(f"--trainer.{flag} must be >= 1{null}, got {value}")
    if subcommand == "fit" and trainer.get("limit_train_batches") == 0:  # Lightning: a fit that says nothing
        error("--trainer.limit_train_batches 0 trains on nothing: give a share of an epoch or a count")
    for flag in ("max_steps", "max_epochs"):  # a fit of nothing, leaving an empty run folder
        if subcommand == "fit" and trainer.get(flag) == 0:
            error(f"--trainer.{flag} 0 trains nothing: give a count, or -1 for no limit")
    interval = trainer.get("val_check_interval")
    if interval is not None and interval <= 0:  # 0: a modulo by zero after the first batch; 0.0: every batch
        error(
            f"--trainer.val_check_interval must be > 0: a count of training batches, or a share of an epoch in "
            f"(0, 1], got {interval}"
        )
    if str(trainer.get("precision")) in HALF_WEIGHTS:
        error(
            f"--trainer.precision {trainer.precision}: the weights themselves would be 16-bit, and so validation's "
            "decoding, which picks best.ckpt, while the exported graphs decode in float32; use "
            f"{str(trainer.precision).replace('true', 'mixed')} (16-bit math over float32 weights)"
        )
    start = _spawning(trainer.get("strategy"))
    if start is not None:
        error(
            f"--trainer.strategy {trainer.strategy if isinstance(trainer.strategy, str) else 'DDPStrategy'}: "
            f"processes started by {start} are not supported "
            "(they hand the trained weights back through a file of bare weights, which lit-seq2seq's checked "
            "checkpoints refuse); use --trainer.strategy ddp, the same training with processes started as commands"
        )
    if subcommand == "fit" and trainer.get("enable_checkpointing") is False:
        error(
            "--trainer.enable_checkpointing false: lit-seq2seq's fit always has its checkpoint callback (best.ckpt "
            "and last.ckpt, what --ckpt_path best|last and export read); to write no checkpoint files pass "
            "--checkpoint.save_top_k 0 --checkpoint.save_last false"
        )
    if subcommand == "fit" and not trainer.get("fast_dev_run"):  # (fast_dev_run validates whatever the limits)
        # validation turned off by a flag: said as a fit without validation pairs is, once every check has passed
        every, epochs = trainer.get("check_val_every_n_epoch"), trainer.get("max_epochs")
        if trainer.get("limit_val_batches") == 0:
            warn_no_validation("--trainer.limit_val_batches 0 validates on none")
        elif every is not None and epochs is not None and 0 < epochs < every:
            warn_no_validation(f"--trainer.check_val_every_n_epoch {every} > --trainer.max_epochs {epochs}")


def _is_run_logger(logger: Any) -> bool:
    """Whether `logger` (a config value) is the one Seq2SeqCLI sets: a CSVLogger of <save_dir>/version_N."""
    init = getattr(logger, "init_args", None)
    return getattr(logger, "class_path", None) == CSV_LOGGER and init is not None and init.get("name") == ""


class _NoCloudTips(logging.Filter):
    """Drops Lightning's "💡 Tip:" lines, which advertise its cloud logging and model registry at every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoCloudTips())


class Seq2SeqCLI(LightningCLI):
    """LightningCLI with the data sizes linked into the model, best/last checkpoints and CI-friendly logging.

    Checkpoints passed with --ckpt_path (a file, or best/last: that file of the newest run under
    <default_root_dir>, `checkpoint.resolve`) are read and checked before anything is built: a missing, truncated,
    damaged, altered or foreign file, or one trained with other model sizes than the flags give, exits with code 2
    and a message naming the file. `fit --ckpt_path` resumes a fit, so its data and model flags must be the
    checkpoint's (exit 2 naming each differing flag) unless `--fine_tune true` asks for a new fit from its weights.
    A fit stopped by a NaN/infinite loss exits with code 1 and one line saying at which step.
    """

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        interactive = self._interactive = sys.stderr.isatty()
        given = sys.argv[1:] if args is None else args
        Seq2SeqArgumentParser.command = next((a for a in given if a in LIGHTNING_COMMANDS), "")
        words = [str(a) for a in given]
        # the flags typed on the command line: for the parser's messages, and the CLI's own checks (self._typed)
        self._typed = Seq2SeqArgumentParser.typed = frozenset(a.split("=", 1)[0] for a in words if a.startswith("--"))
        Seq2SeqArgumentParser.configs = tuple(
            [b for a, b in zip(words, words[1:], strict=False) if a == "--config"]
            + [a.split("=", 1)[1] for a in words if a.startswith("--config=")]
        )
        self._checkpoint: dict[str, Any] | None = None  # the --ckpt_path file, read once
        self._resumed_at: int | None = None  # the global step a resumed fit starts from
        self._fine_tune = False
        try:
            with warnings.catch_warnings():
                # The data module restores the sampler position itself (data.ResumableSampler), so Lightning's
                # warning about resuming mid-epoch with a plain DataLoader does not apply.
                warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
                # Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates; nothing a user can act on.
                warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
                # Under DDP, Lightning asks for sync_dist on epoch-level logs; ours are torchmetrics' compute(),
                # already reduced over every rank (Seq2SeqModule._log_epoch).
                warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/")
                # strategy.all_gather (of the losses: Seq2SeqModule.training_step) calls a deprecated torch API.
                warnings.filterwarnings("ignore", message=r"torch.distributed.nn.functional.all_gather is deprecated")
                # test/predict of a --trainer.max_time fit: Lightning asks for its Timer, which only a fit uses
                warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, .* \['Timer'\]\.$")
                # Mixed precision keeps the weights in float32, so the summary's 32-bit size is the true one.
                warnings.filterwarnings("ignore", message=r"Precision bf16-mixed is not supported by the model summary")
                # A fit without validation says so itself (data.warn_no_validation); Lightning's words for it point
                # at code the user never wrote ("HINT: Did you call log(...)").
                warnings.filterwarnings("ignore", message=r"Total length of `\w+` across ranks is zero\. Please")
                warnings.filterwarnings("ignore", message=r"`ModelCheckpoint\(monitor='val/exact_match'\)` could")
                super().__init__(
                    Seq2SeqModule,
                    L.LightningDataModule,
                    subclass_mode_data=True,  # --data PairDataModule or data: {class_path: ...}; the default below
                    parser_class=Seq2SeqArgumentParser,
                    args=args,
                    run=run,
                    seed_everything_default=42,
                    save_config_kwargs={"overwrite": True},
                    auto_configure_optimizers=False,
                    trainer_defaults={  # the progress bar: see instantiate_trainer
                        "callbacks": [PredictionWriter()] + ([] if interactive else [LogProgress()]),
                    },
                )
        except checkpoint.SettingError as error:  # a bad flag found once the data is loaded: as parser.error does
            if self.trainer.is_global_zero:
                print(f"lit-seq2seq {self.subcommand}: error: {error}", file=sys.stderr, flush=True)
                log_dir = getattr(self.trainer.logger, "log_dir", None)  # the logger's own: no broadcast here
                if log_dir:  # made before the data was loaded
                    _remove_empty_run(Path(log_dir))
            sys.exit(2)
        except NonFiniteError as error:  # a training outcome, not a crash: one line, exit code 1
            if self.trainer.is_global_zero:  # every rank stops; the first one speaks for them
                print(f"lit-seq2seq {self.subcommand}: error: {error}", file=sys.stderr, flush=True)
            sys.exit(1)
        except OSError as error:  # a full disk or an unwritable folder mid-run: a training outcome too, exit code 1
            trainer = getattr(self, "trainer", None)  # None: it failed before any run began; the traceback says where
            # A failed write() does not know its file; the run's folder does.
            what = error.filename or f"into {trainer.default_root_dir if trainer else '.'}"
            failure = checkpoint.CheckpointWriteError.caused_by(error, what, known_only=True) if trainer else None
            if failure is None:  # not a write failure the user can act on: the traceback helps more
                raise
            print(f"lit-seq2seq {self.subcommand}: error: {failure}", file=sys.stderr, flush=True)
            sys.exit(1)
        _leave_process_group()

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        with _ActionPrintConfig.skip_print_config():  # --print_config: printed below, or after --ckpt_path is read
            super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand == "fit" or (self.config.get(subcommand or "") or {}).get("ckpt_path") is None:
            _ActionPrintConfig.print_config_if_requested(parser, self.config)  # jsonargparse's own moment
        if subcommand:
            parser.settled = f"lit-seq2seq {subcommand}"  # parsed: what fails from here on is named in one line
        config = self.config.get(subcommand or "") or self.config
        if config.get("trainer") is not None and not config.trainer.get("default_root_dir"):
            config.trainer.default_root_dir = DEFAULT_ROOT_DIR  # before best|last are looked for, the logger is made
        seed = self._seed_given = config.get("seed_everything")
        if seed is True:
            # Lightning 2.6 seeds `true` with 0 ("No seed found"), where --help promises a random seed. A DDP process
            # that Lightning started takes the seed its parent drew (PL_GLOBAL_SEED, set by the parent's seeding).
            child = os.environ.get("LOCAL_RANK", "0") != "0" and "PL_GLOBAL_SEED" in os.environ
            config.seed_everything = (
                int(os.environ["PL_GLOBAL_SEED"]) if child else random.SystemRandom().randint(*SEED_RANGE)
            )
        elif isinstance(seed, int) and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            parser.error(f"--seed_everything must be in [0, {SEED_RANGE[1]}] (or true for a random seed), got {seed}")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in DATA_TO_NET:  # properties of the instantiated data module
            parser.link_arguments(f"data.{name}", f"model.net.{name}", apply_on="instantiate")
        _counts_before_shares(parser)
        parser.add_argument(
            "--torch_threads",
            type=int | None,
            default=None,
            help="torch intra-op threads (default: torch's choice). On a shared or busy machine 1 is often far "
            "faster for these small RNNs; results are reproducible only at a fixed thread count.",
        )
        parser.add_argument(
            "--report",
            type=bool,
            default=True,
            help="fit: write report.png and report.csv (learning curves, per-position accuracy) into the run folder "
            "at the end, when matplotlib (the report extra) is installed.",
        )
        parser.add_argument(
            "--fine_tune",
            type=bool,
            default=False,
            help="fit only: start a new fit from the weights of --ckpt_path (step 0, a fresh optimizer, the data "
            "from the start), with any --data.* and training flags; the model's sizes must fit the weights. Without "
            "it, fit --ckpt_path resumes that fit exactly and refuses data or model flags that differ from the "
            "checkpoint's.",
        )
        parser.add_lightning_class_args(Seq2SeqCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "data": {"class_path": DEFAULT_DATA},
                "checkpoint.monitor": "val/exact_match",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best",
                "checkpoint.save_last": True,
            }
        )

    def _parse_ckpt_path(self) -> None:
        """Replaces LightningCLI's own (which torch.loads --ckpt_path to take the model's hyperparameters from it):
        resolve `best|last`, read and check the file once (exit 2 naming it if it is bad), take the hyperparameters
        from that read, and hand the checkpoint to the trainer's checkpoint IO so the restore does not read it again.
        Then validate/test/predict --print_config prints the config they run: the checkpoint's file, model and text
        settings in it, not the defaults (a trial read `hidden_size: 128` for a model of 32).
        """
        with _ActionPrintConfig.skip_print_config():  # its parse_object would print the config half-way
            self._read_ckpt_path()
        if _ActionPrintConfig.is_print_config_requested(self.parser):
            # as given: `true` draws a seed for a run (parse_arguments), not for a config to run again
            self.config[self.config.subcommand].seed_everything = self._seed_given
            _ActionPrintConfig.print_config_if_requested(self.parser, self.config)

    def _read_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        self._fine_tune = bool(config.get("fine_tune"))
        if self._fine_tune and (subcommand != "fit" or ckpt_path is None):
            self.parser.error("--fine_tune true needs fit and a --ckpt_path to take the weights from")
        if ckpt_path is None or str(ckpt_path) in LIGHTNING_CKPT_NAMES or str(ckpt_path).startswith("registry:"):
            return
        try:
            if ckpt_path in checkpoint.NAMES:
                root = config.trainer.default_root_dir
                resolved = checkpoint.resolve(ckpt_path, root, subcommand)
                if not _ActionPrintConfig.is_print_config_requested(self.parser):  # its stdout is the YAML alone
                    rank_zero_info(checkpoint.resolved_note(ckpt_path, root, resolved))
                config.ckpt_path = ckpt_path = str(resolved)
            # Lightning's own errors for a bad file are long tracebacks, and a checkpoint whose weights were altered
            # would load as a different model.
            self._checkpoint = read_checkpoint(ckpt_path)
        except ValueError as error:
            self.parser.error(str(error))
        try:
            hparams = upgrade_hparams(self._checkpoint["hyper_parameters"])
        except ValueError as error:
            self.parser.error(f"--ckpt_path {ckpt_path}: {error}")
        hparams.pop("_instantiator", None)
        data = self.config[subcommand].data
        if subcommand != "fit" and self._checkpoint.get(TEXT_KEY) is not None and not _pair_data(data):
            self.parser.error(
                f"--ckpt_path {ckpt_path}: its model was trained on text pairs; pass --data PairDataModule with the "
                f"pair files to {subcommand} on (--data.test_file, ...)"
            )
        if subcommand != "fit" and self._checkpoint.get(TEXT_KEY) is None and _pair_data(data):
            # PairDataModule would ask for a training file to build vocabularies an id model cannot read
            task = (self._checkpoint.get("datamodule_hyper_parameters") or {}).get("task")
            what = f"the generated task {task!r}" if isinstance(task, str) else "token ids"
            self.parser.error(
                f"--ckpt_path {ckpt_path}: its model was trained on {what}, not on text pairs, so pair files cannot "
                f"be read for it; {subcommand} it without --data PairDataModule"
            )
        if hparams and subcommand != "fit":
            self._refuse_other_model_flags(subcommand, hparams, ckpt_path)
            # test/validate/predict take the model's settings from the checkpoint; a fit states them (a resume is
            # checked against the checkpoint's, a fine-tune builds what its flags say)
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
            data = self.config[subcommand].data  # parse_object returns a new namespace
        if subcommand != "fit" and self._checkpoint.get(TEXT_KEY) is not None and _pair_data(data):
            args = data.init_args
            if args.get("train_file") is None and args.get("file") is None and args.get("text_from") is None:
                args.text_from = str(ckpt_path)  # no training file given: the vocabularies the model was trained with
            for flag in ("train_file", "file"):
                if args.get(flag) is not None and not os.path.exists(args[flag]):
                    self.parser.error(
                        f"--data.{flag} {args[flag]}: no such file; to {subcommand} without it, pass --data.{flag} "
                        "null: the vocabularies then come from --ckpt_path"
                    )
            # The vocabularies are built again from the training file (or --data.file's split): with the tokenizers
            # the model was trained with, unless typed (they had to be repeated, or the vocabularies differed)
            trained = self._checkpoint[TEXT_KEY]
            ignored = []  # typed at the default value, which the data module's own note cannot tell from not typed
            for name in ("source_tokenizer", "target_tokenizer", "source_lowercase", "target_lowercase"):
                if name not in trained:
                    continue
                if f"--data.{name}" not in self._typed:
                    args[name] = trained[name]
                elif args.get("text_from") is not None and args[name] == _TEXT_DEFAULTS[name] != trained[name]:
                    ignored.append(f"--data.{name} {str(args[name]).lower()}")
            if ignored:
                sides = ("source", "target")
                tokenizers = {s: Tokenizer(trained[f"{s}_tokenizer"], bool(trained[f"{s}_lowercase"])) for s in sides}
                rank_zero_info(overridden_note(tokenizers, ignored))

    def _set_seed(self) -> None:
        # Lightning's says "Seed set to N" here, before any check of the data or flags: an error then came second,
        # under it. Seeded silently now (parse_arguments made `true` a number), said once the checks have passed.
        seed = self._get(self.config, "seed_everything")
        if seed is not False:
            L.seed_everything(seed, workers=True, verbose=False)

    def _refuse_other_model_flags(self, subcommand: str, hparams: dict[str, Any], ckpt_path: str) -> None:
        """Exit 2 for a --model.* flag typed on the command line (not one from a --config file, often the fit's own)
        whose value differs from the checkpoint's: test/validate/predict use the checkpoint's settings, and the flag
        was silently ignored (--model.net.hidden_size 32 tested the 16-unit model it holds)."""
        model = self.config[subcommand].model
        for flag in sorted(self._typed):
            key = flag.removeprefix("--model.")
            if not flag.startswith("--model.") or key.split(".")[0] not in hparams:
                continue
            theirs, ours = hparams, model
            for part in key.split("."):
                theirs = theirs.get(part) if isinstance(theirs, dict) else None
                ours = ours.get(part) if isinstance(ours, Namespace) else None
            ours = ours.as_dict() if isinstance(ours, Namespace) else ours  # --model.net '{...}'
            if theirs is not None and ours != theirs:
                self.parser.error(
                    f"--model.{key} {ours}: the checkpoint's model has {theirs}, and {subcommand} uses the "
                    f"model of --ckpt_path {ckpt_path} as it was trained; drop the flag"
                )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.torch_threads is not None:
            if config.torch_threads < 1:
                self.parser.error(f"--torch_threads must be >= 1, got {config.torch_threads}")
            torch.set_num_threads(config.torch_threads)
        net = config.model.get("net")
        if net is not None and not isinstance(net, Namespace):  # `net: 32` in a YAML: a traceback in Lightning's links
            fields = "net: {hidden_size: 32, ...}, or --model.net.hidden_size 32"
            self.parser.error(f"--model.net must be a mapping of its fields ({fields}), got {net!r}")
        trainer = config.trainer
        _check_trainer(trainer, self.subcommand, self.parser.error)
        root = trainer.default_root_dir
        if config.trainer.logger in (None, True) or _is_run_logger(config.trainer.logger):
            # CSV logs under <default_root_dir>/version_N: the report reads them; no TensorBoard needed. A run's saved
            # config.yaml holds this logger with its root: given again, it follows --trainer.default_root_dir.
            config.trainer.logger = Namespace(class_path=CSV_LOGGER, init_args=Namespace(save_dir=root, name=""))
        _check_writable(root, self.parser)
        if config.trainer.logger is False and (Path(root) / "config.yaml").exists():  # SaveConfigCallback overwrites
            self.parser.error(
                f"--trainer.logger false: this run's config.yaml would go into {root} itself, which holds an earlier "
                "run's config.yaml; pass another --trainer.default_root_dir (with a logger, every run has a version_N "
                "folder of its own)"
            )
        if self.subcommand == "fit":
            _check_fused_clipping(config, self.parser)
            if _pair_data(config.data) and config.data.init_args.get("text_from") is not None:
                self.parser.error(FIT_TEXT_FROM)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, MisconfigurationException) as error:  # our checks, the Trainer's: like any bad flag
            flags = "" if "--" in str(error) else _flags_named_in(str(error), self.config[self.subcommand])
            self.parser.error(f"{flags}: {error}" if flags else str(error))
        missing = getattr(self.datamodule, "missing_split", None)  # a data split the subcommand needs and lacks
        why = missing(self.subcommand) if self.subcommand is not None and missing is not None else ""
        if why:
            self.parser.error(why)  # now, before a run folder exists, not from inside the run
        configured = None
        if self.subcommand == "fit":
            self._check_fit_memory()
            try:  # a bad optimizer or scheduler value, named now: the fit would raise it inside its run folder
                configured = self.model.configure_optimizers()
            except (ValueError, TypeError) as error:
                self.parser.error(f"--model.optimizer / --model.lr_scheduler: {error}")
            self._check_monitors(configured)
        if self._checkpoint is not None:
            if self.subcommand == "fit" and not self._fine_tune:
                self._check_same_settings(self._checkpoint, configured)
                self._resumed_at = self._checkpoint.get("global_step")
                epoch, last = self._checkpoint.get("epoch", 0), self.trainer.max_epochs
                if last is not None and last != -1 and epoch > last:  # Lightning's traceback, in the run folder
                    self.parser.error(
                        f"--trainer.max_epochs {last}: the checkpoint is in epoch {epoch} (step {self._resumed_at}), "
                        f"past that end: nothing to train; give --trainer.max_epochs {epoch + 1} or more to go on"
                    )
            elif hasattr(self.datamodule, "text_differences"):  # the ids must mean the tokens the model learned
                self._check_same_text(self._checkpoint)
            self._check_model_matches(self._checkpoint)
            if self._fine_tune:  # the weights only; the trainer starts a new fit
                self.model.load_state_dict(self._checkpoint["state_dict"])
                self.config_init[self.subcommand]["ckpt_path"] = None
            self._checkpoint = None  # the trainer's checkpoint IO holds it until the restore
        seed = self._get(self.config, "seed_everything")
        if seed is not False:
            rank_zero_info(f"Seed set to {seed}")  # what Lightning's seeding says, now that nothing was refused

    def _check_monitors(self, configured: Any) -> None:
        """Exit 2 for a checkpoint, early stopping or ReduceLROnPlateau watching a metric the fit never logs:
        Lightning raises that at the first validation's end, a traceback after an epoch of training."""
        watched = []
        for callback in self.trainer.callbacks:
            if isinstance(callback, (ModelCheckpoint, EarlyStopping)) and callback.monitor is not None:
                ours = isinstance(callback, Seq2SeqCheckpoint)
                flag = "--checkpoint.monitor" if ours else f"--trainer.callbacks {type(callback).__name__} monitor"
                watched.append((flag, callback.monitor))
        schedule = configured.get("lr_scheduler") if isinstance(configured, dict) else None
        if isinstance(schedule, dict) and schedule.get("monitor"):
            watched.append(("--model.lr_scheduler ReduceLROnPlateau monitor", schedule["monitor"]))
        for flag, name in watched:
            if not Seq2SeqModule.logs(name):
                known = ", ".join(f"val/{m}" for m in EPOCH_METRICS)
                self.parser.error(
                    f"{flag} {name}: the fit logs no such metric; it logs {known} (each validation), train/loss, and "
                    "val/position_<i>_acc for generated tasks"
                )

    def _check_fit_memory(self) -> None:
        """Exit 2 when this machine's memory cannot hold a training step of the longest batch (a CPU fit): its
        activations (NetConfig.activation_bytes), weights, gradients and Adam's moments in every process here.
        Without this, one very long line in a pair file ends a fit at its first long batch, killed without a word."""
        if not isinstance(self.trainer.accelerator, CPUAccelerator):
            return  # a GPU's memory: CUDA's out-of-memory error names it
        data, net = self.datamodule, self.model.net.config
        pairs, source_length = isinstance(data, PairDataModule), data.source_length
        processes = self.trainer.num_devices
        step = net.activation_bytes(data.batch_size, source_length) + 20 * net.parameter_count()  # + DDP's buckets
        lengths = (
            "cap the lengths (--data.max_source_tokens, --data.max_target_tokens, with --data.skip_long true)"
            if pairs
            else "lower --data.source_length or --data.target_length"
        )
        try:
            check_memory(
                processes * step,
                f"--data.batch_size {data.batch_size} x the longest source ({source_length} tokens) x "
                f"{net.max_target_length} decoder steps: a training step's activations, weights, gradients and Adam "
                f"state (about, float32) in {processes} process(es) (--trainer.devices) need",
                f"lower --data.batch_size or {lengths}",
            )
        except ValueError as error:
            self.parser.error(str(error))

    def _check_same_settings(self, checkpoint: dict[str, Any], configured: Any) -> None:
        """Exit 2 if a resumed fit's data or model flags differ from those its checkpoint was trained with: it would
        continue another fit than the one it claims to (other samples, sizes or net), without a word. `configured`:
        what the model's configure_optimizers returned."""
        ckpt_path = self.config[self.subcommand].ckpt_path
        differ = []
        saved_data = checkpoint.get("datamodule_hyper_parameters") or {}
        data = self.datamodule
        foreign = sorted(k for k in saved_data if not k.startswith("_") and k not in data.hparams)
        if foreign:  # trained with another data module (generated tasks vs pair files)
            differ.append(f"--data {type(data).__name__} (the checkpoint was trained with --data.{foreign[0]} ...)")
        position = checkpoint.get(type(data).__qualname__) or {}
        # the training file's contents are compared below (resume_differences) where the checkpoint has their hash:
        # its path may be written otherwise (relative, a copy); other files are the same when their paths resolve so
        by_contents = ("train_file", "file") if position.get("train_sha256") else ()
        for key, value in saved_data.items():
            ours = data.hparams.get(key, value)
            if key.startswith("_") or key in RESUMABLE_DATA_CHANGES or key in by_contents or ours == value:
                continue
            if key in PATH_FLAGS and all(isinstance(v, str) for v in (ours, value)):
                if os.path.realpath(ours) == os.path.realpath(value):
                    continue
            differ.append(f"--data.{key} {ours} (checkpoint: {value})")
        processes = self.trainer.num_devices * self.trainer.num_nodes
        mid_epoch = 0 < position.get("batches", 0) < position.get("epoch_batches", float("inf"))
        if mid_epoch and position.get("processes", processes) != processes:
            # mid-epoch, the batches trained are counted per process: another count of processes would skip too few
            # or too many of the epoch's samples
            differ.append(
                f"--trainer.devices/--trainer.num_nodes: {processes} process(es) (checkpoint: {position['processes']}, "
                f"{position['batches']} batches into epoch {position.get('epoch')})"
            )
        if not differ and hasattr(data, "resume_differences"):  # the same flags, but the files they name changed
            differ += data.resume_differences(checkpoint)
        saved_model = upgrade_hparams(checkpoint["hyper_parameters"])
        ours_model = self.model.hparams
        for key, value in sorted(saved_model.get("net", {}).items()):
            ours = ours_model["net"].get(key, value)
            if key not in DATA_TO_NET and ours != value:  # the linked sizes follow from the data flags above
                differ.append(f"--model.net.{key} {ours} (checkpoint: {value})")
        for key, value in saved_model.items():
            if key not in ("net", "_instantiator") and ours_model.get(key, value) != value:
                differ.append(f"--model.{key} {ours_model[key]} (checkpoint: {value})")
        differ += _optimizer_differences(configured, checkpoint)
        if differ:
            self.parser.error(
                f"--ckpt_path {ckpt_path}: a resumed fit must keep the settings it was trained with, but "
                f"{', '.join(differ)}; pass the checkpoint's settings to resume it, or --fine_tune true to start a "
                "new fit from its weights"
            )

    def _check_same_text(self, checkpoint: dict[str, Any]) -> None:
        """Exit 2 if the vocabularies built from the training file now differ from the checkpoint's (test, validate,
        predict, fine-tune): the same ids would stand for other tokens, and every figure would be wrong; or if
        --data.file is split otherwise: the model's training pairs would be scored as unseen."""
        differ = self.datamodule.text_differences(checkpoint) + self.datamodule.split_differences(checkpoint)
        if differ:
            self.parser.error(
                f"--ckpt_path {self.config[self.subcommand].ckpt_path}: {'; '.join(differ)}; pass the training file "
                "and the tokenizer and split flags the model was trained with"
            )

    def _check_model_matches(self, checkpoint: dict[str, Any]) -> None:
        """Exit 2 if the checkpoint's weights do not fit the model the flags describe (other sizes)."""
        ckpt_path = self.config[self.subcommand].ckpt_path
        saved = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
        built = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        if saved == built:
            return
        theirs = upgrade_hparams(checkpoint["hyper_parameters"])["net"]
        ours = self.model.hparams["net"]
        differ = [
            f"net.{k}={theirs[k]!r} ({'the data gives' if k in DATA_TO_NET else 'flags:'} {ours[k]!r})"
            for k in sorted(theirs)
            if theirs[k] != ours.get(k, theirs[k])
        ]
        detail = ", ".join(differ) if differ else f"weights {sorted(set(saved) ^ set(built)) or 'shapes'} differ"
        self.parser.error(
            f"--ckpt_path {ckpt_path}: the checkpoint holds a model of other sizes than the flags describe: "
            f"{detail}; pass the --config/--model.*/--data.* flags it was trained with (the data decides "
            f"{', '.join(DATA_TO_NET)}: for generated tasks --data.vocab_size and --data.target_length)"
        )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        if "plugins" not in kwargs:
            plugins = self.config_init.get(str(self.subcommand), self.config_init).get("trainer", {}).get("plugins")
            plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
            if not any(isinstance(p, CheckpointIO) for p in plugins):
                io = Seq2SeqCheckpointIO()  # a fit killed while writing never leaves a torn checkpoint
                if self._checkpoint is not None and not self._fine_tune:
                    io.preload(self.config[self.subcommand].ckpt_path, self._checkpoint)
                plugins.append(io)
            kwargs["plugins"] = plugins
        if self.config_init[str(self.subcommand)]["trainer"].get("enable_progress_bar") is None:
            # A bar on a terminal, LogProgress lines in a log. Decided here, not as a default: a default is written
            # into config.yaml, and that config given again on a terminal would turn the bar off.
            kwargs["enable_progress_bar"] = self._interactive
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (TypeError, ImportError) as error:  # --trainer.devices x, --trainer.accelerator tpu without torch_xla
            if not _raised_in_lightning(error):
                raise
            self.parser.error(f"--trainer.* flags: {error}")
        except MisconfigurationException as error:  # e.g. "No supported gpu backend found!": name what was asked
            given = self.config[self.subcommand]
            self.parser.error(f"{_flags_named_in(str(error), given) or _device_flags(given.trainer)}: {error}")
        if not trainer.loggers:  # else Lightning raises it when the fit starts, inside its run folder
            for callback in trainer.callbacks:
                if isinstance(callback, (LearningRateMonitor, DeviceStatsMonitor)):
                    name = type(callback).__name__
                    self.parser.error(
                        f"--trainer.callbacks {name} writes to the logger, and --trainer.logger false turns it off: "
                        f"drop one of them"
                    )
        trainer.callbacks.append(checkpoint.StopOnSigterm())  # after the checkpoint callbacks it asks to write
        return trainer

    def _say_untrained(self) -> None:
        """validate/test/predict without --ckpt_path run on the model as built: fresh weights. Said as the run starts
        (not at parsing, which may still fail), once."""
        if self.config_init[self.subcommand].get("ckpt_path") is None and self.trainer.is_global_zero:
            print(
                f"lit-seq2seq {self.subcommand}: no --ckpt_path: the model's initial weights (untrained) are used; "
                "pass --ckpt_path best, last or a file for a trained one",
                file=sys.stderr,
            )

    before_validate = before_test = before_predict = _say_untrained

    def after_fit(self) -> None:
        """Write the training report of this run (LightningCLI calls after_<subcommand> once it returns)."""
        trainer = self.trainer
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not (trainer.is_global_zero and log_dir and trainer.logger is not None):
            return
        if trainer.global_step == self._resumed_at:
            # A resume of a finished fit: with its empty run folder removed, `--ckpt_path last` and `report` find the
            # run it continues as before.
            removed = _remove_empty_run(Path(log_dir))
            print(
                f"nothing trained: the checkpoint (step {self._resumed_at}) had already reached the fit's end; raise "
                "--trainer.max_epochs, --trainer.max_steps or --trainer.max_time to go on"
                + (f" (its empty run folder {log_dir} was removed)" if removed else ""),
                file=sys.stderr,
            )
            return
        if not self.config.fit.report:
            return
        if importlib.util.find_spec("matplotlib") is None:
            print(
                f"no training report: matplotlib is not installed ({install_hint('report')}; then "
                f"lit-seq2seq report --log_dir {log_dir})",
                file=sys.stderr,
            )
            return
        from lit_seq2seq.report import write_report

        if not os.path.exists(os.path.join(log_dir, "metrics.csv")):  # nothing logged: no report to ask for later
            every = trainer.log_every_n_steps
            print(
                f"no training report: nothing was logged ({trainer.global_step} training steps, no validation; "
                f"the training loss is logged every --trainer.log_every_n_steps {every} steps)",
                file=sys.stderr,
            )
            return
        try:
            png, table = write_report(log_dir)
        except ValueError as error:  # a metrics.csv the report cannot read
            print(f"no training report: {error}", file=sys.stderr)
            return
        print(f"training report written to {png} and {table}", file=sys.stderr)


def _remove_empty_run(folder: Path) -> bool:
    """Remove a run folder that holds only what every fit writes before its first step (its config, hyperparameters
    and resume record); whether it did."""
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}
    if not found <= {"config.yaml", "hparams.yaml", f"checkpoints/{RESUMED_FROM}"}:
        return False
    shutil.rmtree(folder)
    return True


def _pair_data(data: Any) -> bool:
    """Whether a parsed --data is the pair-file data module (its class path, as jsonargparse resolved it)."""
    path = data.get("class_path") if isinstance(data, Namespace) else None
    return path in (PairDataModule.__qualname__, f"{PairDataModule.__module__}.{PairDataModule.__qualname__}")


def _leave_process_group() -> None:
    """Under DDP, let every rank finish the command before any exits, then close the process group: a rank that
    exits while gloo still talks to it can make the others abort at interpreter exit (seen under load)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _check_writable(root: str | os.PathLike, parser: LightningArgumentParser) -> None:
    """Every command writes its run folder under --trainer.default_root_dir: refuse an unwritable one (read-only file
    system, no permission, a file in the way) before anything starts, naming the path, instead of a traceback from
    the logger's first mkdir. Nothing is left behind: the nearest existing folder on the way is asked, then tried
    with an empty folder made and removed (os.access says yes to root in /proc and /sys, where mkdir fails)."""
    root = str(root)  # a str or a Path, as the Trainer takes it
    if "://" in root:  # remote storage (s3://...): fsspec's business
        return
    existing = os.path.abspath(root)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        parser.error(f"--trainer.default_root_dir {root}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "read-only file system" if os.statvfs(existing).f_flag & os.ST_RDONLY else "permission denied"
        parser.error(f"--trainer.default_root_dir {root}: cannot write into {existing} ({why}); pass a writable folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".lit-seq2seq-probe-", dir=existing))
    except OSError as error:
        why = error.strerror or type(error).__name__
        parser.error(
            f"--trainer.default_root_dir {root}: cannot make a folder in {existing} ({why}); pass a writable folder"
        )
    # The logger numbers run folders past the version_N folders it sees, not files: one of those names a file
    # (version_0, or version_11 beside version_10/) made its mkdir fail with a traceback
    if os.path.isdir(root):
        files = sorted(e.name for e in os.scandir(root) if re.fullmatch(r"version_\d+", e.name) and not e.is_dir())
        if files:
            parser.error(
                f"--trainer.default_root_dir {root}: {files[0]} is a file, where run folders are numbered; move it "
                "or pass another folder"
            )


# A scheduler's progress, not its settings (and what torch derives from them).
SCHEDULER_STATE = {"base_lrs", "last_epoch", "_step_count", "_is_initial", "_get_lr_called_within_step", "_last_lr"}
SCHEDULER_STATE |= {"best", "num_bad_epochs", "cooldown_counter", "mode_worse", "_schedule_phases", "verbose"}


def _optimizer_differences(configured: Any, checkpoint: dict[str, Any]) -> list[str]:
    """The optimizer and scheduler flags of a resumed fit (`configured`: what its configure_optimizers returned) that
    differ from those its checkpoint trained with.

    Lightning loads the checkpoint's optimizer and scheduler state over the new ones: a changed learning rate was
    dropped without a word, a changed or removed schedule went on from a state it never had. Compared: the
    optimizer's constructor settings (its param group), the scheduler's settings (its state_dict less its progress)
    and the initial learning rate; the interval is a hyperparameter, compared with the others."""
    saved_optimizers, saved_schedulers = checkpoint.get("optimizer_states") or [], checkpoint.get("lr_schedulers")
    if len(saved_optimizers) != 1 or saved_schedulers is None:  # not a checkpoint of our fit's layout
        return []
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    scheduler = configured["lr_scheduler"]["scheduler"] if isinstance(configured, dict) else None
    saved, ours = saved_optimizers[0]["param_groups"][0], optimizer.param_groups[0]
    name = type(scheduler).__name__ if scheduler is not None else "null"
    if bool(saved_schedulers) != (scheduler is not None):
        return [f"--model.lr_scheduler {name} (checkpoint: {'a schedule' if saved_schedulers else 'none'})"]
    if not set(optimizer.defaults) <= set(saved):
        return [f"--model.optimizer {type(optimizer).__name__} (checkpoint: another optimizer)"]
    # a schedule moves the rate (OneCycleLR the momentum too): its starting point, initial_lr, is the setting then;
    # how the step runs (one fused kernel or per tensor) may change, the update rule is the same
    moved = {"lr", "betas", "momentum"} if getattr(scheduler, "cycle_momentum", False) else {"lr"}
    moved |= {"foreach", "fused", "capturable", "differentiable"}
    differ = [
        f"--model.optimizer.{key} {ours[key]} (checkpoint: {saved[key]})"
        for key in optimizer.defaults
        if key not in moved and not _same(ours[key], saved[key])
    ]
    if scheduler is None and not _same(ours["lr"], saved["lr"]):
        differ.append(f"--model.optimizer.lr {ours['lr']} (checkpoint: {saved['lr']})")
    added = sorted(set(ours) - set(optimizer.defaults) - {"params"})  # what the schedule set: initial_lr, max_lr
    changed = [key for key in added if key in saved and not _same(ours[key], saved[key])]
    if "max_lr" in changed:  # OneCycleLR derives its first and last rates from it
        changed = [key for key in changed if key not in ("initial_lr", "min_lr")]
    for key in changed:
        flag = "--model.optimizer.lr" if key == "initial_lr" and "max_lr" not in ours else f"--model.lr_scheduler.{key}"
        differ.append(f"{flag} {ours[key]} (checkpoint: {saved[key]})")
    if scheduler is not None:
        state, saved_state = scheduler.state_dict(), saved_schedulers[0]
        if set(state) != set(saved_state):
            return [*differ, f"--model.lr_scheduler {name} (checkpoint: another schedule)"]
        differ += [
            f"--model.lr_scheduler.{key} {state[key]} (checkpoint: {saved_state[key]})"
            for key in sorted(set(state) - SCHEDULER_STATE)
            if not _same(state[key], saved_state[key])
        ]
    return differ


def _same(a: Any, b: Any) -> bool:
    """Equal settings, a tuple and the list a checkpoint may hold it as alike."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _check_fused_clipping(config: Namespace, parser: LightningArgumentParser) -> None:
    """Lightning's fp16 mixed-precision plugin cannot clip the gradients of a fused optimizer, which unscales them
    inside its step, and refuses at the first step; say so before anything starts, naming the flags. (Under
    bf16-mixed, which has no grad scaler, Seq2SeqModule.configure_gradient_clipping clips them.)"""
    optimizer = config.model.get("optimizer")
    init_args = optimizer.get("init_args") if isinstance(optimizer, Namespace) else None
    precision = str(config.trainer.get("precision"))
    if (
        isinstance(init_args, Namespace)
        and init_args.get("fused")
        and config.trainer.get("gradient_clip_val")
        and precision in ("16", "16-mixed")
    ):
        parser.error(
            f"--trainer.gradient_clip_val {config.trainer.gradient_clip_val} cannot be combined with a fused optimizer "
            f"(--model.optimizer.fused true) under --trainer.precision {precision}: the optimizer unscales the "
            "gradients inside its step, after the clipping. Pass --model.optimizer.fused false, or drop the clipping."
        )
