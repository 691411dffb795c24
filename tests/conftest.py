"""Shared test set-up: run from the repository root, keep anchor caches out of the user's home."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# One anchor cache for the whole test session (subprocess smoke tests inherit it).
os.environ.setdefault("R3L_ANCHOR_CACHE", tempfile.mkdtemp(prefix="r3l-anchors-tests-"))


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT
