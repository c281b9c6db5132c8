#!/usr/bin/env python3
"""`make chaos CHAOS_ARGS="..."`: a bounded chaos run against an nmc cluster of its own (kills, a
pause, a crash under load; or --changes, live scaling and rollouts under load). The run itself
is the package harness/chaos/ (its docstring says what it does); this is its entry point, so
that `scripts/chaos.py` keeps working as before. `python -m harness.chaos` is the same."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: harness/

from harness.chaos.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
