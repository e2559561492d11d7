"""`python -m lit_seq2seq` runs the CLI."""

import sys

from lit_seq2seq.cli import main

sys.argv[0] = "lit-seq2seq"  # the program's name in usage lines, not __main__.py (DDP relaunches with -m, as given)
sys.exit(main())
