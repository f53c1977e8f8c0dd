"""`lumina-rt inspect SIZE_OR_CHECKPOINT`: config, parameter count and keys of a model size or checkpoint."""

from __future__ import annotations

import argparse
import json

from lumina_rt.cli.common import Runner


def add(p: argparse.ArgumentParser) -> Runner:
    from lumina_rt.config import MODEL_SIZES

    p.add_argument("target", help=f"a model size ({', '.join(sorted(MODEL_SIZES))}) or a checkpoint directory")
    p.add_argument("--keys", action="store_true", help="list every state-dict key and shape")
    p.add_argument("--json", action="store_true", help="print JSON")
    return run


def run(args: argparse.Namespace) -> int:
    from lumina_rt.describe import describe_target

    info = describe_target(args.target)
    if not args.keys:
        info.pop("state_dict")
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"model: {info['name']}")
    for k, v in info["config"].items():
        print(f"  {k:<20} {v}")
    for k, v in info["derived"].items():
        print(f"  {k:<20} {v}   (derived)")
    print(f"parameters: {info['parameters']:,}")
    if args.keys:
        for k, shape in info["state_dict"].items():
            print(f"{k}  {list(shape)}")
    return 0
