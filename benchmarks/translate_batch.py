"""Large translate() batches: the runtime's length-sorted chunks of CHUNK_ROWS rows (beam search: BEAM_CHUNK_ROWS source
rows x beams) against one onnxruntime call.

Each side runs in a fresh process (peak memory is per process), alternately, `--rounds` times: the texts of a TSV's
first column (distinct, sorted, the first `--words`), `OnnxSeq2Seq.translate` greedy (or `--beam_size K`), one
intra-op thread. "one call" is the same runtime with the chunk sizes past the batch, so the graphs see the whole batch,
padded to its longest row. Both must give the same texts (checked). Prints median seconds and peak RSS, and ratios.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/translate_batch.py --model_dir DIR --file data/cmudict/test.tsv
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import hashlib, json, resource, sys, time
import lit_seq2seq.runtime as runtime
model_dir, file, words, beam_size, whole = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if whole == "1":
    runtime.CHUNK_ROWS = runtime.BEAM_CHUNK_ROWS = 10**9
model = runtime.OnnxSeq2Seq.load(model_dir, intra_op_threads=1)
with open(file, encoding="utf-8") as f:
    texts = sorted({line.split("\\t")[0] for line in f if line.strip()})[:words]
start = time.perf_counter()
out = model.translate(texts, beam_size=beam_size if beam_size > 1 else None)
seconds = time.perf_counter() - start
digest = hashlib.sha256("\\n".join(out).encode()).hexdigest()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"texts": len(texts), "seconds": seconds, "peak": peak, "digest": digest}))
"""


def run(args: argparse.Namespace, whole: bool) -> dict:
    argv = [args.model_dir, args.file, str(args.words), str(args.beam_size), "1" if whole else "0"]
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True)
    if done.returncode != 0:  # "one call" can be killed for memory: say so rather than print a ratio
        return {"failed": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:] or ''}"}
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, help="a text model's export folder")
    p.add_argument("--file", required=True, help="TSV whose first column holds the texts")
    p.add_argument("--words", type=int, default=10**9, help="at most this many distinct texts (default: all)")
    p.add_argument("--beam_size", type=int, default=1, help="1: greedy (default)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    results: dict[str, list[dict]] = {"chunks": [], "one call": []}
    for _ in range(args.rounds):
        for name in results:
            results[name].append(run(args, whole=name == "one call"))
    failed = {name: r["failed"] for name, rs in results.items() for r in rs if "failed" in r}
    if failed:
        for name, why in failed.items():
            print(f"{name}: {why}")
        return 1
    if len({r["digest"] for rs in results.values() for r in rs}) != 1:
        print("the two sides gave different texts")
        return 1
    texts = results["chunks"][0]["texts"]
    decode = "greedy" if args.beam_size == 1 else f"beam {args.beam_size}"
    print(f"translate() of {texts} texts, {decode}, 1 thread, median of {args.rounds} processes each; same texts")
    med = {n: (statistics.median(r["seconds"] for r in rs), max(r["peak"] for r in rs)) for n, rs in results.items()}
    print(f"{'':10}{'seconds':>10}{'peak MB':>10}")
    for name, (seconds, peak) in med.items():
        print(f"{name:10}{seconds:10.2f}{peak / 2**20:10.0f}")
    (cs, cp), (ws, wp) = med["chunks"], med["one call"]
    print(f"chunks vs one call: {ws / cs:.2f}x faster, {wp / cp:.1f}x less peak memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
