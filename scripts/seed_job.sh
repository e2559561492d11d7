#!/usr/bin/env bash
# The main job: set up, train the seed task (configs/reverse.yaml), test the best checkpoint, export it to ONNX,
# then decode 1,000 fresh sequences with onnxruntime alone and print the exact match.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/lit-seq2seq ] || bash scripts/setup.sh
run=${RUN_DIR:-runs/reverse}
bin=.venv/bin/lit-seq2seq
$bin fit --config configs/reverse.yaml --trainer.default_root_dir "$run"
$bin test --config configs/reverse.yaml --trainer.default_root_dir "$run" --ckpt_path best
$bin export --ckpt_path best --root_dir "$run" --output_dir "$run/onnx" --overwrite  # the fit's, as test found it
$bin sample --model_dir "$run/onnx" -n 1000 --seed 2026 > "$run/fresh.tsv"
$bin decode --model_dir "$run/onnx" < "$run/fresh.tsv" > "$run/decoded.txt"
echo "decoded $(wc -l < "$run/decoded.txt") fresh sequences with onnxruntime: $run/decoded.txt"
