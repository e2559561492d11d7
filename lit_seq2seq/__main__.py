"""`python -m lit_seq2seq` runs the CLI."""

import sys

from lit_seq2seq.cli import main

sys.exit(main())
