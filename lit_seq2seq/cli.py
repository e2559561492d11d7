"""`lit-seq2seq` entry point: fit/validate/test/predict through LightningCLI; export, decode, sample, report beside it.

decode and sample import neither torch nor lightning, so they answer in a fraction of a second and work with the base
install (numpy + onnxruntime); the other commands need the `train` extra and say so when it is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lit_seq2seq import __version__, install_hint
from lit_seq2seq.bundled import config_names, resolve_config
from lit_seq2seq.contract import CONTRACT_FILE, DECODER_FILE, ENCODER_FILE, GREEDY_FILE
from lit_seq2seq.runs import DEFAULT_ROOT_DIR
from lit_seq2seq.text import SHOWN_CHARS, UNK_ID, UNK_STR, check_printable, input_lines, show_token

OWN_COMMANDS = ("export", "decode", "sample", "report")
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
# The net's sizes the data decides (linked from the data module's properties into --model.net.*).
DATA_TO_NET = ("source_vocab_size", "target_vocab_size", "max_target_length", "eos_token")
# What the `train` extra brings that fit/validate/test/predict and export import (pyproject.toml).
TRAIN_MODULES = ("torch", "lightning", "jsonargparse", "torchmetrics", "onnx")
TRAIN_EXTRA = install_hint("train")
# decode's notes on stderr for a stdin that is a terminal, and one that held no lines (export/node/decode.mjs's too)
TERMINAL_NOTE = (
    "decode: reading lines typed here, each decoded as it is entered (one with a reference once the next line comes, "
    "as more references of its source may follow); end with Ctrl-D"
)
NO_INPUT_NOTE = "decode: stdin held no lines, nothing decoded (give sources as arguments, or as lines on stdin)"
# The runtime's refusal of an untrained length names its argument and decode's flag: decode's names the flag alone
_RUNTIME_HINT = "pass allow_untrained_lengths=True / --allow_untrained_lengths"


def _show_warning(message: Warning | str, category: type[Warning], *_: object, file: Any = None, **__: object) -> None:
    """warnings.showwarning for a command line: one line each (Category: message), not the path, line number and code
    that raised it; it formats the line itself, so Lightning's warnings.formatwarning (path:line: message, set when
    Lightning is imported) does not apply either."""
    try:
        (file or sys.stderr).write(f"{category.__name__}: {message}\n")
    except OSError:  # stderr gone: a warning is not worth an error (as warnings' own showwarning)
        pass


class InputError(ValueError):
    """Bad input data (a line read by decode), as opposed to a bad flag: reported without the usage text."""


def main(args: Sequence[str] | None = None) -> int:
    """Run the command in `args` (default: sys.argv[1:]); returns the exit code for the own commands."""
    from_argv = args is None
    if from_argv:
        warnings.showwarning = _show_warning
    args = list(sys.argv[1:] if from_argv else args)
    command = args[0] if args and not args[0].startswith("-") else ""
    known = ", ".join(repr(c) for c in (*LIGHTNING_COMMANDS, *OWN_COMMANDS))
    if args == ["--version"]:
        print(f"lit-seq2seq {__version__}")
        return 0
    if not args:  # LightningCLI's own message lists its four commands only
        print(f"lit-seq2seq: error: no command (choose from {known}; lit-seq2seq --help)", file=sys.stderr)
        sys.exit(2)
    if command and command not in LIGHTNING_COMMANDS and command not in OWN_COMMANDS:
        print(f"lit-seq2seq: error: unknown command {command!r} (choose from {known})", file=sys.stderr)
        sys.exit(2)
    own = _parser(command) if command in OWN_COMMANDS else None  # built once: spellings, byte checks, parsing
    if own is not None:
        args = [command, *_underscored(own, args[1:])]
    try:
        _check_flag_bytes(args, own)
    except InputError as error:
        print(f"{_prog(command)}: error: {error}", file=sys.stderr)
        sys.exit(2)
    if command in LIGHTNING_COMMANDS or command == "export" or command not in OWN_COMMANDS:
        _require_train_extra(command, args)
        # OpenMP reads this once, when torch loads it: so before any torch import. Its default, spin-waiting, made a
        # seed-task fit 7x slower on 2 cores shared with other work (benchmarks/omp_under_load.py); a user's value wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if own is not None:
        parser = own
        unknown = _unknown_flag(parser, args[1:])
        if unknown:  # argparse names a missing required flag first: `--model_d DIR` said "--model_dir is required"
            parser.error(f"unrecognized arguments: {unknown}")
        options = parser.parse_args(args[1:])
        from lit_seq2seq.contract import ModelFileError

        if sys.stdout is None and command in ("decode", "sample"):  # `>&-`: print() would fail on None
            print(f"{parser.prog}: error: stdout is closed: nowhere to write the output", file=sys.stderr)
            sys.exit(1)
        try:
            code = options.run(options)
            sys.stdout.flush()  # here, where a reader gone (`| head`) is caught, not at exit (exit code 120)
            return code
        # Bad data or a bad flag's value: one line naming it and exit code 2, as parser.error exits (in-process
        # callers see the same SystemExit(2)); its usage block is for a command line argparse cannot read.
        except (InputError, ModelFileError, ValueError, TypeError) as error:
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            sys.exit(2)
        except BrokenPipeError:  # `... | head`: the reader left; not an error
            _to_devnull(sys.stdout)  # else Python's flush at exit of what is still buffered fails again (exit 120)
            return 0
        except OSError as error:  # decode/sample's only writes: stdout (export reports its own failed writes)
            if command not in ("decode", "sample"):
                raise
            print(f"{parser.prog}: error: cannot write the output to stdout: {error.strerror}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:  # Ctrl-C: the user knows why; an export cleans up its staged folder on the way out
            print(f"{parser.prog}: interrupted", file=sys.stderr)
            sys.exit(130)
    if from_argv:  # before Lightning's import: its log handler keeps the sys.stderr it finds then
        sys.stdout, sys.stderr = _PipeSafe(sys.stdout), _PipeSafe(sys.stderr)
    from lit_seq2seq.train_cli import Seq2SeqCLI, stopped_by_sigterm

    if args and args[0] in ("-h", "--help"):
        print(f"Other commands: {', '.join(OWN_COMMANDS)} (lit-seq2seq COMMAND --help)\n")
    if command in LIGHTNING_COMMANDS and {"-h", "--help"} & set(args):
        print(f"Bundled configs (--config NAME, or a file): {', '.join(config_names())}\n")
    try:
        resolved = _resolve_configs(args)
    except ValueError as error:
        print(f"{_prog(command)}: error: {error}", file=sys.stderr)
        sys.exit(2)
    if from_argv:  # LightningCLI reads sys.argv itself, and DDP relaunches the script with it
        sys.argv[1:] = resolved
    try:
        with stopped_by_sigterm(_prog(command)):
            Seq2SeqCLI(None if from_argv else resolved)
    except KeyboardInterrupt:  # before the run (reading pair files, say): Lightning's own handler covers the run only
        print(f"{_prog(command)}: interrupted", file=sys.stderr)
        sys.exit(130)
    return 0


class _PipeSafe:
    """A run's stdout or stderr that may be a pipe whose reader leaves (`lit-seq2seq fit | head -1`): the run goes on,
    its output from then on into /dev/null, instead of dying of BrokenPipeError in a progress line (a fit lost the
    checkpoints it had not written yet)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            _to_devnull(self._stream)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            _to_devnull(self._stream)

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, ...: the stream's
        return getattr(self._stream, name)


def _to_devnull(stream: Any) -> None:
    """Point a stream whose pipe reader has left at /dev/null: what is still buffered goes there too, as does Python's
    flush at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


def _prog(command: str) -> str:
    return f"lit-seq2seq {command}" if command else "lit-seq2seq"


def _installed(module: str) -> bool:
    try:  # find_spec, not import: nothing of torch is loaded to find out
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _require_train_extra(command: str, args: Sequence[str]) -> None:
    """Exit 2 with one line naming the `train` extra if a module it brings is missing (the base install is the
    runtime alone); `lit-seq2seq --help` still lists the runtime's commands first."""
    missing = [module for module in TRAIN_MODULES if not _installed(module)]
    if not missing:
        return
    needs = f"needs the training extra (missing: {', '.join(missing)}): {TRAIN_EXTRA}"
    if not command and {"-h", "--help"} & set(args):  # help asked for and given: exit 0, as packagers' checks expect
        runtime = ", ".join(c for c in OWN_COMMANDS if c != "export")
        print(f"Commands of the base install: {runtime} (lit-seq2seq COMMAND --help; report needs the report extra)")
        print(f"{', '.join((*LIGHTNING_COMMANDS, 'export'))}: {needs}")
        sys.exit(0)
    print(f"{_prog(command)}: {needs}", file=sys.stderr)
    sys.exit(2)


def _resolve_configs(args: Sequence[str]) -> list[str]:
    """args with each --config/-c value that names a bundled config (`--config reverse_fast`, `--config
    trainer/gpu`) replaced by its file; an existing path wins over a name (bundled.resolve_config). A file that
    holds no settings (empty, or all commented out) is dropped; one that is not YAML is a ValueError naming it."""
    resolved: list[str] = []
    for arg in args:
        if resolved and resolved[-1] in ("-c", "--config"):
            flag, path = resolved.pop(), resolve_config(arg)
        elif arg.startswith("--config="):
            flag, path = "--config", resolve_config(arg.removeprefix("--config="))
        else:
            resolved.append(arg)
            continue
        if _has_settings(path):
            resolved += [flag, path]
    return resolved


def linked_setting(key: str) -> str:
    """Why model.net.`key` (one of DATA_TO_NET) is no setting of its own."""
    return (
        f"model.net.{key} comes from the data, not a setting: for generated tasks from --data.vocab_size, "
        "--data.target_length and --data.task, for pair files from their vocabularies and lengths"
    )


def _has_settings(path: str) -> bool:
    """Whether the --config file `path` holds settings; ValueError naming it when it is not YAML (jsonargparse named
    "<unicode string>", and printed an all-comments file whole as an "Unexpected config"), or when it sets a size
    the data decides (jsonargparse dropped it without a word). A value that is no file (inline YAML) is left to
    jsonargparse."""
    if not os.path.isfile(path):
        return True
    import yaml  # the train extra's (jsonargparse needs it)

    try:
        with open(path, encoding="utf-8") as f:
            settings = yaml.safe_load(f)
    except UnicodeDecodeError:
        raise ValueError(f"--config {path}: not UTF-8 text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ValueError(f"--config {path}: not valid YAML{where}: {problem}") from None
    model = settings.get("model") if isinstance(settings, dict) else None
    net = model.get("net") if isinstance(model, dict) else None
    linked = [key for key in DATA_TO_NET if isinstance(net, dict) and key in net]
    if linked:
        raise ValueError(f"--config {path}: {linked_setting(linked[0])}; remove it")
    return settings is not None


def _underscored(parser: argparse.ArgumentParser, args: Sequence[str]) -> list[str]:
    """`args` with each --dashed-flag of `parser`'s known as its --underscored_flag: decode.mjs's spellings
    (--beam-size 4, --skip-bad-lines), so one script drives both."""
    known = set(parser._option_string_actions)
    out = []
    for arg in args:
        if isinstance(arg, str) and arg.startswith("--"):  # (a caller's Path values pass through)
            name, sep, value = arg.partition("=")
            underscored = "--" + name[2:].replace("-", "_")
            if name not in known and underscored in known:
                arg = underscored + sep + value
        out.append(arg)
    return out


def _unknown_flag(parser: argparse.ArgumentParser, args: Sequence[str]) -> str | None:
    """The first --flag in `args` that `parser` does not know (before a bare "--", after which all is positional)."""
    for arg in args:
        if arg == "--":
            return None
        # (argparse reads an argument with a space as a positional one, a source such as "--x y")
        name = arg.partition("=")[0] if isinstance(arg, str) and arg.startswith("--") and " " not in arg else None
        if name and name not in parser._option_string_actions:
            return name
    return None


def _parser(command: str) -> argparse.ArgumentParser:
    # no abbreviations (--skip for --skip_bad_lines): decode.mjs takes none, and a prefix's value went unchecked
    parser = argparse.ArgumentParser(
        prog=f"lit-seq2seq {command}", description=_COMMANDS[command][0], allow_abbrev=False
    )
    _COMMANDS[command][1](parser)
    return parser


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ckpt_path",
        required=True,
        help="checkpoint written by `lit-seq2seq fit`: a file, or best|last: that file of the newest fit under "
        "--root_dir (as `lit-seq2seq test --ckpt_path best` finds it)",
    )
    p.add_argument(
        "--root_dir",
        default=DEFAULT_ROOT_DIR,
        help="with --ckpt_path best|last: the fit's --trainer.default_root_dir, holding its version_N folders "
        f"(default: {DEFAULT_ROOT_DIR}, where a fit without one writes)",
    )
    p.add_argument(
        "--output_dir",
        required=True,
        help=f"folder of its own for {ENCODER_FILE}, {DECODER_FILE}, {GREEDY_FILE} and {CONTRACT_FILE}: an export "
        "replaces it as a whole, so it must hold nothing else",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 14 to 20 (default 17)")
    p.add_argument(
        "--verify_samples", type=int, default=256, help="random sources whose greedy tokens must match (default 256)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --output_dir")
    p.set_defaults(run=_run_export)


def _run_export(o: argparse.Namespace) -> int:
    """Exit codes: 0 exported; 1 the graphs failed verification; 2 a bad flag or checkpoint, a refused --output_dir,
    or the output could not be written (full disk, read-only location). The folder is unchanged unless 0."""
    from lit_seq2seq.checkpoint import NAMES, resolve, resolved_note
    from lit_seq2seq.export import ExportVerificationError, ExportWriteError, export_checkpoint

    ckpt_path = o.ckpt_path
    if ckpt_path in NAMES:
        try:
            ckpt_path = resolve(ckpt_path, o.root_dir, "export")
        except ValueError as error:
            raise ValueError(f"{error} (--root_dir {o.root_dir}: the fit's --trainer.default_root_dir)") from None
        print(resolved_note(o.ckpt_path, o.root_dir, ckpt_path), file=sys.stderr)
    try:
        report = export_checkpoint(ckpt_path, o.output_dir, o.opset, o.verify_samples, o.overwrite)
    except ExportVerificationError as error:
        print(f"lit-seq2seq export: verification failed, nothing was written: {error}", file=sys.stderr)
        return 1
    except ExportWriteError as error:  # the disk, not the command line: one line, no usage text
        print(f"lit-seq2seq export: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(report)
    return 0


def _decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model_dir",
        required=True,
        help=f"folder written by `lit-seq2seq export` ({ENCODER_FILE}, {DECODER_FILE}, ...)",
    )
    p.add_argument(
        "sequences",
        nargs="*",
        help="source sequences as 'TOKEN TOKEN ...' (a text model: texts), each read as a line of stdin is, so "
        "'SOURCE<TAB>REFERENCE' is scored; none: read stdin, decoding and printing each batch of --batch_size lines "
        "as it is read (constant memory)",
    )
    p.add_argument("--beam_size", type=int, default=1, help="1: greedy (default); more: beam search")
    p.add_argument(
        "--length_penalty",
        type=float,
        help="beam search only (--beam_size > 1): score / length ** this, in [-10, 10] (default 1)",
    )
    p.add_argument(
        "--batch_size",
        type=int,
        default=2048,
        help="lines read, decoded and printed together (default 2048; decoded in length-sorted chunks of 256 sources, "
        "of max(1, 1024 // K) at beam size K > 4)",
    )
    p.add_argument(
        "--n_best",
        type=int,
        default=1,
        help="beam search only: print up to N distinct answers of each source, best first, one line each (beams "
        "answering alike print once; with --with_source each after its source, so a source's lines read back as its "
        "references); the best alone is scored (default 1)",
    )
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    p.add_argument(
        "--two_graph",
        action="store_true",
        help="greedy by the encoder + decoder-step loop even where the export has greedy.onnx (the same tokens; "
        "to check the two graphs an app drives step by step)",
    )
    p.add_argument(
        "--skip_bad_lines",
        action="store_true",
        help="skip lines that are not valid sources (nothing is printed for them) and count them on stderr, "
        "instead of stopping at the first with exit code 2 (the lines before it are printed, nothing after it)",
    )
    p.add_argument(
        "--allow_untrained_lengths",
        action="store_true",
        help="decode sources shorter or longer than any the model was trained on (its metadata's min_source_length "
        "to source_length); by default such a line is a bad line: the model answers it with confident garbage",
    )
    p.add_argument(
        "--with_source",
        action="store_true",
        help="print each decoding after its source and a tab, SOURCE<TAB>DECODING (the source as read: the line's text "
        'before any tab, or --jsonl\'s "source"), so each output line names its input whatever was skipped or merged; '
        "the output is a pair file, as `sample` prints one",
    )
    p.add_argument(
        "--jsonl",
        action="store_true",
        help='read each line (and argument) as one JSON object {"source": SOURCE, "target": REFERENCE}, "target" '
        "optional, as training reads .jsonl pair files (other keys ignored): decoded, printed and scored as the line "
        "SOURCE<TAB>REFERENCE (SOURCE without one) is; an id model's source and target are strings of space-separated "
        "ids",
    )
    p.set_defaults(run=_run_decode)


_ID = re.compile(r"[+-]?[0-9]+")


def _parse_tokens(text: str, where: str) -> list[int]:
    """A line of ids: integers of ASCII digits (int() alone would also read "1_3" and "١٣" as 13) separated by
    whitespace (str.split's), as export/node/decode.mjs and export/consumer_example.py read it."""
    parts = text.split()
    if not all(_ID.fullmatch(t) for t in parts):  # the line shown cut: a 50 MB line made a 50 MB "one line" error
        raise InputError(f"{where}: {show_token(text.strip())} is not a list of space-separated integer token ids")
    # int64's range, checked on the digits first: int() of thousands of them raises its own error (or takes long)
    huge = [t for t in parts if len(t.lstrip("+-")) > 19 or not -(2**63) <= int(t) < 2**63]
    if huge:
        token = huge[0] if len(huge[0]) <= SHOWN_CHARS else show_token(huge[0])
        raise InputError(f"{where}: token {token} is out of range")
    return [int(t) for t in parts]


def _stdin_lines(flush: Callable[[], None]) -> Iterator[str]:
    """stdin's lines as they arrive, by text.input_lines' rules; a byte that is not UTF-8 is an InputError, raised
    after `flush` printed the lines before it (as a bad line's error is)."""
    # the bytes (lines end at b"\n" alone); a text stream without them (an in-process caller's StringIO) as UTF-8;
    # a closed one (`<&-`: None) as no lines, as Node reads it
    stream = getattr(sys.stdin, "buffer", None) or (line.encode("utf-8", "surrogatepass") for line in sys.stdin or ())
    try:
        yield from input_lines(stream)
    except ValueError as error:
        flush()
        raise InputError(f"stdin {error}") from None


def _run_decode(o: argparse.Namespace) -> int:
    import numpy as np

    from lit_seq2seq.runtime import OnnxSeq2Seq, pad_batch
    from lit_seq2seq.search import check_beam_settings

    for flag, value in (("--beam_size", o.beam_size), ("--batch_size", o.batch_size), ("--threads", o.threads)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if o.length_penalty is not None and o.beam_size == 1:  # greedy has no scores to rank: it would change nothing
        raise ValueError("--length_penalty applies to beam search only: add --beam_size K (K > 1)")
    try:  # here, not by the first beam_search, which runs after a batch of stdin was read
        o.beam_size, o.length_penalty = check_beam_settings(
            o.beam_size, 1.0 if o.length_penalty is None else o.length_penalty
        )
    except ValueError as error:
        raise ValueError(f"--{error}") from None  # its messages start with the setting's name
    if o.two_graph and o.beam_size > 1:
        raise ValueError("--two_graph applies to greedy only: beam search always runs the two graphs")
    if o.n_best != 1 and o.beam_size == 1:  # greedy has one answer
        raise ValueError("--n_best applies to beam search only: add --beam_size K (K >= N)")
    if not 1 <= o.n_best <= o.beam_size:  # the final beams are all there is to rank
        raise ValueError(f"--n_best must be in [1, --beam_size ({o.beam_size})], got {o.n_best}")
    model = OnnxSeq2Seq.load(o.model_dir, intra_op_threads=o.threads)
    _note_file_arguments(o)
    if not o.sequences and getattr(sys.stdin, "isatty", bool)():  # a person typing: each answered as entered
        o.batch_size = 1
        print(TERMINAL_NOTE, file=sys.stderr)
    if model.text is not None:
        return _decode_text(o, model)
    allow = o.allow_untrained_lengths
    batch: list[_Source] = []  # the batch being filled; each line's references: [its expected answer] or None
    empty: list[str] = []  # the lines whose source decoded to an empty answer
    scored = hits = unscored = number = 0
    bad: list[str] = []

    def decode_batch() -> None:
        # Decode, print and score the lines read so far; printed as each batch is done, so a reader sees output
        # while decode still reads, and memory holds one batch whatever the input's size.
        nonlocal scored, hits
        if not batch:
            return
        answers = _answers(model, pad_batch([s.ids for s in batch], model.pad_token), o, allow)
        ranked = [[" ".join(map(str, answer)) for answer in row] for row in answers]
        _print_decoded(ranked, [s.text for s in batch] if o.with_source else None)
        empty.extend(s.where for s, row in zip(batch, ranked) if "" in row)
        for s, row in zip(batch, answers, strict=True):
            if s.references is not None:
                scored += 1
                hits += row[0] == s.references[0]
        batch.clear()

    label = "argument" if o.sequences else "line"
    for number, line in enumerate(o.sequences or _stdin_lines(decode_batch), 1):
        try:
            if o.sequences:
                _check_argument_bytes(line, number)
            source_text, tab, target = _fields(line, f"{label} {number}", o.jsonl)
            try:
                source = _parse_tokens(source_text, f"{label} {number}")
            except InputError as error:
                raise InputError(_hint_json(str(error), line, o.jsonl)) from None
            try:
                model.check_source(np.asarray(source, dtype=np.int64), allow_untrained_lengths=allow)
            except ValueError as error:
                raise InputError(f"{label} {number}: {_flag_only(error)}") from None
            reference = None
            if tab:  # "8 14 21 1 0" (as a target row holds it) expects the answer "8 14 21"
                _check_reference(target, f"{label} {number}")
                reference = model.strip(_parse_tokens(target, f"{label} {number} (expected)"))
        except InputError as error:
            if not o.skip_bad_lines:
                decode_batch()  # every line before the bad one is printed, none after it
                raise
            bad.append(str(error))
            continue
        batch.append(_Source(source_text, source, None if reference is None else [reference], f"{label} {number}"))
        unscored += reference is None
        if len(batch) == o.batch_size:
            decode_batch()
    decode_batch()
    if scored:
        print(f"exact match: {hits}/{scored} = {hits / scored:.2%}{_unscored(unscored, label)}", file=sys.stderr)
    _note_empty(empty, o.with_source)
    return _exit_code(bad, number, label)


def _answers(model, source, o: argparse.Namespace, allow: bool) -> list[list[list[int]]]:  # noqa: ANN001
    """decode's answers of a padded batch: per source its answer's ids, or with --n_best N up to N distinct ones, best
    first (OnnxSeq2Seq.distinct)."""
    if o.beam_size == 1:
        tokens = model.greedy(source, allow_untrained_lengths=allow, two_graph=o.two_graph)
        return [[model.strip(row)] for row in tokens]
    tokens, scores = model.beam_search(
        source, o.beam_size, o.length_penalty, allow_untrained_lengths=allow, n_best=o.n_best
    )
    return [model.distinct(t, s) for t, s in zip(tokens, scores)]


def _print_decoded(ranked: list[list[str]], sources: list[str] | None) -> None:
    """decode's output of one batch, a line per answer of each source (one, or up to --n_best, best first):
    DECODING, or SOURCE<TAB>DECODING with --with_source."""
    if sources is None:
        sys.stdout.write("".join(d + "\n" for row in ranked for d in row))
    else:
        sys.stdout.write("".join(f"{s}\t{d}\n" for s, row in zip(sources, ranked, strict=True) for d in row))
    sys.stdout.flush()


class _Source:
    """One source read by decode: its text as read, its ids, and the references of its SOURCE<TAB>REFERENCE lines
    (a text model's adjacent lines of one source are one source with several reference texts; an id model's line
    holds one expected answer, its ids)."""

    def __init__(self, text: str, ids: list[int], references: list[str] | list[list[int]] | None, where: str) -> None:
        self.text, self.ids, self.references = text, ids, references  # references None: a line without a tab
        self.where = where  # its first line, named as messages name it


class _Scores:
    """decode's scores of a text model, as `lit-seq2seq test` counts them: one per distinct source (its token ids),
    correct when its prediction equals any of the references on all its lines, wherever in the input they are."""

    def __init__(self, model) -> None:  # noqa: ANN001 - OnnxSeq2Seq, imported lazily
        self.model = model
        self.groups: dict[tuple[int, ...], int] = {}  # source ids -> index into predictions and references
        self.predictions: list[list[int]] = []  # each distinct source's decoded tokens
        # each distinct source's distinct references, in order (a repeat changes no score: a common word given
        # 40,000 times over held 40,000 references, and its arrays grew with their square)
        self.references: list[dict[str, None]] = []

    def add(self, ids: list[int], tokens: list[int], references: list[str]) -> None:
        group = self.groups.setdefault(tuple(ids), len(self.groups))
        if group == len(self.predictions):
            self.predictions.append(tokens)
            self.references.append({})
        self.references[group].update(dict.fromkeys(references))

    def _chunks(self) -> Iterator[slice]:
        """Slices of the sources whose reference arrays (sources x their most references x tokens) stay small."""
        start = most = 0
        for i, references in enumerate(self.references):
            most = max(most, len(references))
            if i > start and ((i - start + 1) * most > 1 << 16 or i - start == 4096):
                yield slice(start, i)
                start, most = i, len(references)
        if start < len(self.references):
            yield slice(start, len(self.references))

    def summary(self) -> str | None:
        """'exact match: ...; token error rate: ...', or None when no line had a reference."""
        import numpy as np

        from lit_seq2seq.metrics import score
        from lit_seq2seq.runtime import pad_batch

        exact = errors = length = 0
        for part in self._chunks():  # bounded temporaries, whatever the input's size
            # each row ended by the end token, so no batch is zero wide when every prediction is empty
            eos = self.model.eos_token
            tokens = pad_batch([row + [eos] for row in self.predictions[part]], eos)
            references = self.model.reference_ids([list(refs) for refs in self.references[part]])
            result = score(tokens, references, self.model.eos_token, self.model.pad_token)
            exact += int(np.sum(result.exact))
            errors += int(np.sum(result.errors))
            length += int(np.sum(result.length))
        n = len(self.predictions)
        if not n:
            return None
        ter = f"{errors}/{length} = {errors / length:.2%}" if length else "n/a (references without tokens)"
        return f"exact match: {exact}/{n} = {exact / n:.2%} (WER {1 - exact / n:.2%}); token error rate: {ter}"


def _note_file_arguments(o: argparse.Namespace) -> None:
    """A note on stderr when an argument names a file (`decode --model_dir M words.tsv`): it is decoded as a text, not
    read; a model with <unk> printed an answer for the file name without a word. It gives the command to run."""
    named = next((i for i, arg in enumerate(o.sequences, 1) if os.path.isfile(arg)), None)
    if named is not None:
        arg = o.sequences[named - 1]
        command = shlex.join(["lit-seq2seq", "decode", "--model_dir", o.model_dir, *(["--jsonl"] if o.jsonl else [])])
        print(
            f"note: argument {named} is the name of a file, {show_token(arg)}, decoded as a text; decode reads a "
            f"file's lines from stdin: {command} < {shlex.quote(arg)}",
            file=sys.stderr,
        )


def _decode_text(o: argparse.Namespace, model) -> int:  # noqa: ANN001 - OnnxSeq2Seq, imported lazily
    """decode for a text model: text lines in, one text per source out (adjacent lines of one source: one output);
    SOURCE<TAB>REFERENCE lines are scored at the end as `test` scores a file: exact match (1 - WER) and token error
    rate, each distinct source once, against the references of all its lines."""
    from lit_seq2seq.runtime import pad_batch

    allow = o.allow_untrained_lengths
    batch: list[_Source] = []
    pending: _Source | None = None  # the last source read: more reference lines of it may follow
    scores = _Scores(model)
    bad: list[str] = []
    number = unscored = 0
    label = "argument" if o.sequences else "line"
    unknown: list[str] = []  # sources with a token read as <unk> (a model trained with --data.unknown_source unk)
    empty: list[str] = []  # the sources that decoded to an empty answer (their first lines)
    has_unk = model.text.source_vocab.has_unk

    def decode_batch() -> None:
        if not batch:
            return
        source = pad_batch([s.ids for s in batch], model.pad_token)
        answers = _answers(model, source, o, True)  # lengths were checked line by line, as allowed
        ranked = model.answer_texts(answers)
        _print_decoded(ranked, [s.text for s in batch] if o.with_source else None)
        empty.extend(s.where for s, row in zip(batch, ranked) if "" in row)
        for s, row in zip(batch, answers, strict=True):
            if s.references:
                scores.add(s.ids, row[0], s.references)
        batch.clear()

    def finish_pending() -> None:
        nonlocal pending
        if pending is not None:
            batch.append(pending)
            pending = None
            if len(batch) == o.batch_size:
                decode_batch()

    def flush() -> None:
        finish_pending()
        decode_batch()

    for number, line in enumerate(o.sequences or _stdin_lines(flush), 1):
        try:
            if o.sequences:
                _check_argument_bytes(line, number)
            text, tab, reference = _fields(line, f"{label} {number}", o.jsonl)
            same = bool(tab) and pending is not None and bool(pending.references) and pending.text == text
            if tab:
                _check_reference(reference, f"{label} {number}")
            ids = [] if same else model.encode_text(text, where=f"{label} {number}", allow_untrained_lengths=allow)
        except ValueError as error:
            if not o.skip_bad_lines:
                flush()  # every line before the bad one is printed, none after it
                raise InputError(_hint_json(_flag_only(error), line, o.jsonl)) from None
            bad.append(_flag_only(error))
            continue
        if same:
            pending.references.append(reference)  # one more reference of the source just read
            continue
        finish_pending()
        pending = _Source(text, ids, [reference] if tab else None, f"{label} {number}")
        unscored += not tab
        if not tab:  # no reference lines can follow it: into the batch now (typed at a terminal, decoded now)
            finish_pending()
        if has_unk and UNK_ID in ids:
            unknown.append(f"{label} {number}")
    finish_pending()
    decode_batch()
    summary = scores.summary()
    if summary:
        print(summary + _unscored(unscored, label), file=sys.stderr)
    if unknown:  # decoded, but from a text the model read in part as <unk>: said, not silent
        print(
            f"{len(unknown)} source(s) held tokens the model does not know, each read as {UNK_STR} (the first: "
            f"{unknown[0]})",
            file=sys.stderr,
        )
    _note_empty(empty, o.with_source)
    return _exit_code(bad, number, label)


def _flag_only(error: Exception) -> str:
    """The runtime's message, its hint naming decode's flag alone."""
    return str(error).replace(_RUNTIME_HINT, "pass --allow_untrained_lengths")


def _note_empty(empty: list[str], with_source: bool) -> None:
    """A note on stderr when sources decoded to an empty answer (the model's end token first): said, not silent,
    and with --with_source its lines are no pair file there (a target may not be empty)."""
    if empty:
        printed = "nothing after the tab" if with_source else "an empty line"
        print(
            f"{len(empty)} source(s) had an empty answer, printed as {printed} (the first: {empty[0]})",
            file=sys.stderr,
        )


def _exit_code(bad: list[str], number: int, label: str) -> int:
    """decode's exit code: 0, saying so when stdin held no lines or how many bad lines --skip_bad_lines skipped, or
    an InputError when every one was bad (nothing decoded: a script reading the output would take an empty answer
    for a result)."""
    if number == 0:  # (arguments are never none: without any, decode reads stdin)
        print(NO_INPUT_NOTE, file=sys.stderr)
    if bad and len(bad) == number:
        raise InputError(f"every {label} was bad ({number} skipped), nothing decoded; the first: {bad[0]}")
    if bad:
        print(f"skipped {len(bad)} bad {label}(s) of {number}; the first: {bad[0]}", file=sys.stderr)
    return 0


def _check_reference(reference: str, where: str) -> None:
    """InputError for a line with a tab and nothing after it (fit refuses that pair, "empty target", and decode would
    otherwise print it unscored, as if no reference had been meant), or a reference holding a control character (a
    second tab: a column the reference would silently take in)."""
    if not reference.strip():
        raise InputError(f"{where}: empty reference after the tab")
    try:
        check_printable(reference, f"{where} (reference)")
    except ValueError as error:
        raise InputError(str(error)) from None


def _unscored(count: int, label: str) -> str:
    """The score line's note on the lines without a reference among scored ones: its counts leave them out."""
    return f"; {count} {label}{'s' if count != 1 else ''} without a reference not scored" if count else ""


def _bad_bytes(text: str) -> str:
    """ "invalid UTF-8 (byte 0xff at character 4)" for a command-line argument that was not UTF-8 (Python hands its
    bytes over as lone surrogates, U+DC80-U+DCFF, which later checks would misname), else ""."""
    for position, char in enumerate(text, 1):
        if 0xDC80 <= ord(char) <= 0xDCFF:
            return f"invalid UTF-8 (byte 0x{ord(char) - 0xDC00:02x} at character {position})"
    return ""


def _check_argument_bytes(text: str, number: int) -> None:
    """InputError naming decode's argument `number` if it was not UTF-8."""
    if bad := _bad_bytes(text):
        raise InputError(f"argument {number}: {bad}")


def _check_flag_bytes(args: Sequence[str], own: argparse.ArgumentParser | None = None) -> None:
    """InputError naming the first flag whose value was not UTF-8 (decode checks its texts itself, line by line): a
    folder name that is not UTF-8 failed deep inside jsonargparse or torch's ONNX exporter, in tens of lines. The
    word after an own command's switch (decode --skip_bad_lines TEXT) or unknown flag (argparse names it) is no value
    of it. `own`: the own command's parser (None for LightningCLI's commands)."""
    valued = None  # an own command's flags that take a value; LightningCLI's: every flag
    if own is not None:
        valued = {flag for action in own._actions if action.nargs != 0 for flag in action.option_strings}
    for i, arg in enumerate(args):
        if arg.startswith("--") and "=" in arg:
            flag, value = arg.split("=", 1)
        elif i and args[i - 1].startswith("-") and not arg.startswith("-"):
            flag, value = args[i - 1], arg
        else:
            continue
        if valued is not None and flag not in valued:
            continue
        if bad := _bad_bytes(value):
            raise InputError(f"{flag}: {bad}; file and folder names must be UTF-8")


def _hint_json(message: str, line: str, jsonl: bool) -> str:
    """`message`, with a hint when the line looks like JSON Lines and --jsonl is not given (decode reads
    SOURCE[<TAB>REFERENCE] lines unless told otherwise)."""
    unreadable = "unknown token" in message or "is not a list of space-separated" in message
    if not jsonl and line.lstrip().startswith("{") and unreadable:
        return f"{message} (decode reads SOURCE or SOURCE<TAB>REFERENCE lines; for JSON Lines add --jsonl)"
    return message


_JSONL_HINT = "; --jsonl reads one JSON object per line (SOURCE<TAB>REFERENCE lines: leave --jsonl out)"


def _fields(line: str, where: str, jsonl: bool) -> tuple[str, str, str]:
    """A decode line as (source, tab, reference), what line.partition("\\t") gives: tab "" for a line without a
    reference. With --jsonl the line is a JSON object read as training reads a .jsonl line (pairfiles.
    parse_jsonl_line: its checks and messages, "target" optional), given as the line SOURCE<TAB>TARGET (or SOURCE),
    which is exact: neither text may hold a tab or a line break. InputError naming `where` for a bad line."""
    if not jsonl:
        return line.partition("\t")
    if not line:
        raise InputError(f"{where}: empty line{_JSONL_HINT}")
    from lit_seq2seq.pairfiles import parse_jsonl_line  # numpy and the standard library only (no torch)

    try:
        source, target = parse_jsonl_line(line, where, sources_alone=True, hint=_JSONL_HINT)
    except ValueError as error:
        raise InputError(str(error)) from None
    if target is None:
        return source, "", ""
    if not target.strip():  # as a tab with only spaces after it ("empty reference after the tab")
        raise InputError(f"{where}: empty target (no tokens)")
    return source, "\t", target


def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model_dir", required=True, help="export folder: the task and sizes come from its metadata")
    p.add_argument(
        "-n", "--num", type=int, default=1000, help="number of sequences (default 1000); any number, in constant memory"
    )
    p.add_argument("--seed", type=int, default=12345, help="seed of the fresh sequences (default 12345)")
    p.set_defaults(run=_run_sample)


_SAMPLE_CELLS = 2**16  # source tokens drawn per piece by sample: a few MB, whatever -n is


def _run_sample(o: argparse.Namespace) -> int:
    import numpy as np

    from lit_seq2seq.runtime import OnnxSeq2Seq
    from lit_seq2seq.tasks import PAD, task_from_metadata

    if o.num < 1:
        raise ValueError(f"--num must be >= 1, got {o.num}")
    if o.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {o.seed}")
    model = OnnxSeq2Seq.load(o.model_dir)
    if model.text is not None:
        raise InputError(
            f"--model_dir {o.model_dir} holds a text model (trained on pair files): sample draws fresh sources of a "
            "generated task, and file data has none; decode texts with `lit-seq2seq decode`"
        )
    task = task_from_metadata(model.meta)
    rows = max(1, _SAMPLE_CELLS // task.source_length)
    # The lines of task.sample(num, rng) for this seed, drawn and printed piece by piece (see Task.sample_chunks).
    for source, target in task.sample_chunks(o.num, np.random.default_rng(o.seed), rows):
        sys.stdout.write(
            "".join(
                " ".join(str(x) for x in s if x != PAD) + "\t" + " ".join(map(str, model.strip(t))) + "\n"
                for s, t in zip(source.tolist(), target.tolist())
            )
        )
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log_dir", required=True, help="a run folder with metrics.csv, e.g. runs/reverse/version_0")
    p.set_defaults(run=_run_report)


def _run_report(o: argparse.Namespace) -> int:
    """Exit code 2 for a --log_dir without metrics.csv, a bad row in it (naming file and line) or a report that could
    not be written; an existing report is then unchanged."""
    from lit_seq2seq.report import ReportError, write_report

    try:
        png, table = write_report(o.log_dir)
    except ReportError as error:  # the data or the disk, not the command line: one line, no usage text
        raise InputError(str(error)) from None
    print(f"report written to {png} and {table}")
    return 0


_COMMANDS = {
    "export": (
        f"Export a checkpoint to {ENCODER_FILE} + {DECODER_FILE} (the two-graph contract) and {GREEDY_FILE} (greedy "
        f"decoding in one call), with {CONTRACT_FILE}, verified against PyTorch.",
        _export_args,
    ),
    "decode": (
        "Decode sequences with the exported graphs (onnxruntime, no torch). One sequence per line in and out (a text "
        "model: texts; --n_best N: up to N lines a source; a line ends at a newline, a carriage return before it "
        "dropped); a line 'SOURCE<TAB>EXPECTED' also scores the decoding (a text model: exact match and token error "
        "rate, each source once against the references of all its lines, as `test` scores a file; adjacent lines of "
        "one source print one output). Lines "
        "are decoded and printed a batch at a time as they are read; a bad line (not "
        "token ids or text of the model, a length the model was not trained on, or a tab with no reference after "
        "it) stops decode with exit code 2 after every line before it was printed. --jsonl reads JSON Lines "
        '({"source": ..., "target": ...}, as training does) instead.',
        _decode_args,
    ),
    "sample": ("Print fresh 'SOURCE<TAB>TARGET' lines of an exported model's task.", _sample_args),
    "report": ("Plot learning curves and per-position accuracy of a run (report.png + report.csv).", _report_args),
}
