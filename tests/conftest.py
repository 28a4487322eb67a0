"""Shared fixtures.

The real data sets live in ``../shared/data`` beside the repository (never copied into it). In CI
(``CI=true``) they must be there, so a missing folder fails the test instead of skipping it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        message = f"real data folder {SHARED_DATA} is missing"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA
