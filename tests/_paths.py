"""Locations of the shared ground truth (parity fixtures made by the released code)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("LUMINA_FIXTURES", REPO.parent / "shared" / "fixtures"))
PUBLIC_FIXTURE = FIXTURES / "lumina_parity_public.safetensors"
OFFICIAL_KEYS = FIXTURES / "official_2b_gqa_keys.json"


def require(path: Path) -> Path:
    """The path, or a test failure in CI / a skip naming the missing file elsewhere."""
    if not path.exists():
        msg = f"shared fixture {path} is missing (set LUMINA_FIXTURES to the folder holding it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path
