"""`lit-seq2seq` entry point: fit/validate/test/predict through LightningCLI; export, decode and sample beside it.

decode and sample import neither torch nor lightning, so they answer in a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

OWN_COMMANDS = ("export", "decode", "sample")


def main(args: Sequence[str] | None = None) -> int:
    """Run the command in `args` (default: sys.argv[1:]); returns the exit code for the own commands."""
    args = list(sys.argv[1:] if args is None else args)
    if args and args[0] in OWN_COMMANDS:
        parser = _parser(args[0])
        options = parser.parse_args(args[1:])
        try:
            return options.run(options)
        except ValueError as error:
            parser.error(str(error))
    from lit_seq2seq.lightning_cli import Seq2SeqCLI

    if args and args[0] in ("-h", "--help"):
        print(f"Other commands: {', '.join(OWN_COMMANDS)} (lit-seq2seq COMMAND --help)\n")
    Seq2SeqCLI(args)
    return 0


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"lit-seq2seq {command}", description=_COMMANDS[command][0])
    _COMMANDS[command][1](parser)
    return parser


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt_path", required=True, help="checkpoint written by `lit-seq2seq fit`")
    p.add_argument("--output_dir", required=True, help="folder for encoder.onnx and decoder_step.onnx")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument(
        "--verify_samples", type=int, default=256, help="random sources whose greedy tokens must match (default 256)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --output_dir")
    p.set_defaults(run=_run_export)


def _run_export(o: argparse.Namespace) -> int:
    from lit_seq2seq.export import export_checkpoint

    report = export_checkpoint(
        o.ckpt_path, o.output_dir, opset=o.opset, verify_samples=o.verify_samples, overwrite=o.overwrite
    )
    print(report)
    return 0


def _decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model_dir", required=True, help="folder with encoder.onnx and decoder_step.onnx")
    p.add_argument("sequences", nargs="*", help="source sequences as 'TOKEN TOKEN ...'; none: read stdin")
    p.add_argument("--beam_size", type=int, default=1, help="1: greedy (default); more: beam search")
    p.add_argument("--length_penalty", type=float, default=1.0, help="beam score / length ** this (default 1)")
    p.add_argument("--batch_size", type=int, default=256, help="sequences decoded together (default 256)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    p.set_defaults(run=_run_decode)


def _run_decode(o: argparse.Namespace) -> int:
    from lit_seq2seq.runtime import decode_lines

    lines = o.sequences or sys.stdin.read().splitlines()
    return decode_lines(lines, o.model_dir, o.beam_size, o.length_penalty, o.batch_size, o.threads)


def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model_dir", required=True, help="export folder: the task and sizes come from its metadata")
    p.add_argument("-n", "--num", type=int, default=1000, help="number of sequences (default 1000)")
    p.add_argument("--seed", type=int, default=12345, help="seed of the fresh sequences (default 12345)")
    p.set_defaults(run=_run_sample)


def _run_sample(o: argparse.Namespace) -> int:
    from lit_seq2seq.runtime import sample_lines

    for line in sample_lines(o.model_dir, o.num, o.seed):
        print(line)
    return 0


_COMMANDS = {
    "export": ("Export a checkpoint to encoder.onnx + decoder_step.onnx and verify them.", _export_args),
    "decode": (
        "Decode sequences with the exported graphs (onnxruntime, no torch). One sequence per line in and out; "
        "a line 'SOURCE<TAB>EXPECTED' also scores the decoding.",
        _decode_args,
    ),
    "sample": ("Print fresh 'SOURCE<TAB>TARGET' lines of an exported model's task.", _sample_args),
}
