#!/usr/bin/env python3
"""`make soak [QUICK=1] [SOAK_MINUTES=N]`: nmc under mixed load and faults for a bounded time,
sampled every 10 s and judged on growth. The run itself is the package harness/soak/ (its
docstring says what it does); `python -m harness.soak` is the same."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: harness/

from harness.soak.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
