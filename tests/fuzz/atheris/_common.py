"""What the atheris targets share: the repository's tests on sys.path (for the fuzz harness)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import logging  # noqa: E402

logging.disable(logging.WARNING)  # the runtime's warnings about each malformed input, thousands a second
