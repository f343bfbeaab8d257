"""Evaluate fast adaptation from the command line: the same as ``metarl evaluate`` (see ``metarl evaluate --help``).

python scripts/evaluate.py runs/<run folder>                          # held-out test tasks, seed 0
python scripts/evaluate.py runs/<maml run> runs/<rl2 run> --seeds 0 1 2 --points 3 --out runs/comparison
"""

import sys

from metarl.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
