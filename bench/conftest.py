"""pytest bench/: latency reports. Rows are collected in bench/_report.py and written when the session ends."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(max(1, torch.get_num_threads()))

import _report  # noqa: E402


def pytest_sessionstart(session):
    _report.steady_allocator()
    _report.measure_ceilings()


def pytest_sessionfinish(session, exitstatus):
    _report.write()
    out = Path(__file__).resolve().parent
    if (out / "report.md").exists():
        print(f"\nbench: wrote {out / 'report.md'} and {out / 'report.json'}")
