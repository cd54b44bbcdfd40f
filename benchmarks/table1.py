#!/usr/bin/env python
"""Table 1 of Ullrich et al. (2017) with the baselines: ``sws.study.table1`` (also ``sws bench table1``).

    python benchmarks/table1.py [--quick] [options]    # run from the repository root
"""

import sys

from sws.study.table1 import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
