"""``python -m jaxscratch``: the same as the ``jaxscratch`` command."""
import sys

from jaxscratch.cli import run

sys.exit(run())
