"""Benchmarks of lit_seq2seq against plain PyTorch; their shared timing and setup live in `benchmarks.harness`."""
