"""``python -m benchmarks`` (from the repository root): the benchmark command line."""
import sys

from benchmarks.cli import main

sys.exit(main())
