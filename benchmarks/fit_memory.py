"""Memory of one training step, measured against NetConfig.activation_bytes, the estimate `lit-seq2seq fit` refuses
settings by (a batch whose step cannot fit in this machine's memory exits 2 before training).

Each case runs in a fresh process: build the net and Adam, then one forward + backward + step on random tokens; the
activations are the step's peak RSS (getrusage) less the RSS before it, less the gradients and Adam's two moments
(3 x the weights, float32). Prints each case's measured and estimated MiB and their ratio.

    .venv/bin/python benchmarks/fit_memory.py           # the cases the estimate was fitted to (~1 min, ~2 GiB)
    .venv/bin/python benchmarks/fit_memory.py --quick   # one small case
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence

# batch, source tokens, decoder steps, hidden, embedding (0: one-hot), vocabulary, bidirectional, attention, cell,
# layers
CASES = [
    (32, 500, 10, 128, 64, 50, 1, 1, "lstm", 1),
    (32, 2000, 10, 128, 64, 50, 1, 1, "lstm", 1),
    (32, 20, 500, 128, 64, 50, 1, 1, "lstm", 1),
    (32, 20, 2000, 128, 64, 50, 1, 1, "lstm", 1),
    (32, 1000, 1000, 128, 64, 50, 1, 1, "lstm", 1),
    (32, 2000, 10, 256, 64, 50, 1, 1, "lstm", 1),
    (32, 20, 1000, 256, 64, 50, 1, 1, "lstm", 1),
    (32, 20, 500, 128, 64, 5000, 1, 1, "lstm", 1),
    (32, 2000, 10, 128, 64, 50, 0, 0, "lstm", 1),
    (32, 20, 2000, 128, 64, 50, 0, 0, "lstm", 1),
    (64, 1000, 1000, 64, 32, 200, 1, 1, "lstm", 1),
    (32, 2000, 10, 128, 64, 50, 1, 1, "gru", 1),
    (32, 1000, 500, 128, 64, 50, 1, 1, "lstm", 2),
    (32, 2000, 10, 128, 0, 51, 0, 0, "lstm", 1),
    (32, 20, 2000, 128, 0, 51, 0, 0, "gru", 2),
]
QUICK = [(32, 1000, 10, 128, 64, 50, 1, 1, "lstm", 1)]

STEP = """
import json, os, resource, sys
import torch
import torch.nn.functional as F
from lit_seq2seq.model import NetConfig, Seq2Seq, shift_right

batch, source_length, steps, hidden, embedding, vocab, bidirectional, attention, cell, layers = json.loads(sys.argv[1])
torch.manual_seed(0)
config = NetConfig(
    source_vocab_size=vocab, target_vocab_size=vocab, max_target_length=steps, eos_token=1, hidden_size=hidden,
    embedding_dim=embedding or None, bidirectional=bool(bidirectional), attention=bool(attention), cell=cell,
    num_layers=layers, dropout=0.1,
)
net = Seq2Seq(config)
optimizer = torch.optim.Adam(net.parameters())
source = torch.randint(2, vocab, (batch, source_length))
target = torch.randint(2, vocab, (batch, steps))
page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
before = int(open(f"/proc/{os.getpid()}/statm").read().split()[1]) * page_kib
logits = net(source, shift_right(target, 0))
F.cross_entropy(logits.reshape(-1, vocab), target.reshape(-1)).backward()
optimizer.step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
weights = 4 * sum(p.numel() for p in net.parameters())
measured = (peak - before) * 1024 - 3 * weights
print(json.dumps({"measured": measured, "estimate": config.activation_bytes(batch, source_length)}))
"""


def measure(case: Sequence) -> dict[str, int]:
    """One case in a fresh process (its peak RSS is this step's alone): measured and estimated bytes."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", STEP, json.dumps(list(case))], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"case {case}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small case")
    args = parser.parse_args(argv)
    if sys.platform != "linux":
        parser.error("reads the RSS from /proc (Linux only)")
    columns = "batch,source,steps,hidden,emb,vocab,bi,att,cell,layers,measured MiB,estimate MiB,ratio".split(",")
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    ratios = []
    for case in QUICK if args.quick else CASES:
        got = measure(case)
        ratios.append(got["estimate"] / got["measured"])
        cells = " | ".join(map(str, case))
        print(f"| {cells} | {got['measured'] / 2**20:.0f} | {got['estimate'] / 2**20:.0f} | {ratios[-1]:.2f} |")
    print(f"estimate / measured: {min(ratios):.2f} to {max(ratios):.2f}")
    return ratios


if __name__ == "__main__":
    main()
