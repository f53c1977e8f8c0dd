"""`lumina-rt build`: export, check and build a checkpoint's engines (flags: `lumina_rt.export.build_engines`)."""

from __future__ import annotations

import argparse

from lumina_rt.cli.common import Runner


def add(p: argparse.ArgumentParser) -> Runner:
    from lumina_rt.export.build_engines import add_arguments, run

    add_arguments(p)
    return run
