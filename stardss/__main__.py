"""`python -m stardss ...`: the console script run by a given Python (what `stardss submit`'s
entrypoint runs on a cluster, where the `stardss` script may not be on the head's PATH)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
