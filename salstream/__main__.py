"""``python -m salstream``: the same command line as the ``salstream`` script."""
import sys

from salstream.cli import main

sys.exit(main())
