"""Meta-train from the command line: the same as ``metarl train`` (see ``metarl train --help``).

python scripts/train.py                                   # MAML-TRPO on Navigation2D, the default run
python scripts/train.py --preset navigation2d-maml-trpo   # the MAML paper's settings
python scripts/train.py iterations=20 seed=3              # overrides
python scripts/train.py --resume runs/<run folder>        # continue from its last checkpoint
"""

import sys

from metarl.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
