"""`lumina-rt make-data OUT`: sample clips of the synthetic multi-source training data, as GIFs + captions.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lumina_rt.cli.common import Runner


def add(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("out", help="output folder")
    p.add_argument("-n", type=int, default=8, help="number of clips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--frames", type=int, default=8)
    return run


def run(args: argparse.Namespace) -> int:
    from lumina_rt.data import SyntheticDataset
    from lumina_rt.video import write_video

    batch = SyntheticDataset(args.seed).video_batch(0, args.n, args.size, args.frames)
    out = Path(args.out)
    rows = []
    for i in range(args.n):
        write_video((batch.x[i] + 1) / 2, out / f"clip{i:03d}.gif", scale=4)
        rows.append(
            {
                "file": f"clip{i:03d}.gif",
                "caption": batch.captions[i],
                "source": batch.sources[i],
                "motion_score": round(float(batch.motion[i]), 4),
            }
        )
    (out / "captions.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.n} clips to {out}")
    return 0
