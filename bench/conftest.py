"""pytest bench/: latency reports. Rows are collected in bench/report_rows.py and written when the session ends."""

from __future__ import annotations

from pathlib import Path

import report_rows  # bench/ is on sys.path: pytest puts a conftest's folder there (bench/ is not a package)
import torch

torch.set_num_threads(max(1, torch.get_num_threads()))


def pytest_sessionstart(session):
    report_rows.steady_allocator()
    report_rows.measure_ceilings()


def pytest_sessionfinish(session, exitstatus):
    """report.json, report.md and its plots (bench/plots.py; a missing matplotlib or a failing plot never fails the
    session), when this session measured anything."""
    if report_rows.write():
        out = Path(__file__).resolve().parent
        print(f"\nbench: wrote {out / 'report.md'} (with its plots) and {out / 'report.json'}")
