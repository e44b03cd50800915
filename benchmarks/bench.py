"""``make bench`` (``python benchmarks/bench.py --help``): see benchmarks/suite.py."""

import sys
from pathlib import Path

if __name__ == "__main__":
    # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.suite import app

    app()
