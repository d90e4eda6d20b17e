"""Shared fixtures: paths to the real data in ../shared/data and generated demo clips."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"real test data missing: {SHARED_DATA} (see DEVELOPERS.md)")
    return SHARED_DATA
