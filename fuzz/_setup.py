"""Shared setup of the atheris harnesses: the repository on ``sys.path``.

Run a harness from the repository root, e.g. ``.venv/bin/python fuzz/fql.py -atheris_runs=5000000``
(libFuzzer options: ``-max_total_time=600``, ``-timeout=10`` for hangs, ``-rss_limit_mb=2048``,
a corpus directory as a positional argument). ``pip install -e '.[fuzz]'`` installs atheris.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
