"""Shared fixtures: paths to the real data in ../shared/data and generated demo clips."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real recordings (ESC-10, a few videos). Without them the tests that need them are
    skipped, with the reason (``pytest -rs`` lists them), rather than failing: README.md says how
    to get the data."""
    if not (SHARED_DATA / "esc10").is_dir() or not (SHARED_DATA / "videos").is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (esc10/ and videos/; README.md, under Quick start, says how to get it)")
    return SHARED_DATA
