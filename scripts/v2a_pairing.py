"""Does the built-in V2A model still pair with a video model? (docs/training.md, "V2A pairing")

Generates 12 of `lumina-rt eval`'s 36 prompts (every third) with the video model's multi-scale preset and seed 0,
adds sound with the built-in V2A model (reference torch path), and scores each clip as `lumina-rt eval-v2a` does:
pitch class against the colour measured from the generated frames, onsets against the visual events found in them.

    python scripts/v2a_pairing.py                          # the built-in video model, split heldout
    python scripts/v2a_pairing.py --model DIR --split combos
"""

from __future__ import annotations

import argparse
import json

import torch

from lumina_rt.builtin import builtin_dir, trained_size
from lumina_rt.pipeline import Pipeline
from lumina_rt.training.evaluate import EVAL_SPLITS, eval_prompts
from lumina_rt.v2a.eval import score_clip, summarise
from lumina_rt.v2a.soundtrack import load_soundtrack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(builtin_dir()), help="video model directory (default: built-in)")
    parser.add_argument("--split", default="heldout", choices=EVAL_SPLITS)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipe = Pipeline.from_checkpoint(args.model)
    frames, height, width = trained_size(args.model)
    prompts = eval_prompts(args.split)[::3]
    stage = load_soundtrack(reference=True)
    res = pipe.generate([p.prompt for p in prompts], frames=frames, height=height, width=width, preset="multi_scale",
                        seed=0, item_motion=[p.motion for p in prompts], audio=stage, progress=False)  # fmt: skip
    scores = []
    for i, p in enumerate(prompts):
        small = stage.v2a.prepare_frames(res.frames[i])  # resized to the V2A model's frame size, as it saw them
        r = score_clip(res.audio[i], small, stage.v2a.spec)
        scores.append(r)
        print(f"{p.prompt!r}: colour {r['colour']}, pitch {r['pitch_class']}, onsets {r['n_onsets']}, "
              f"visual events {r['n_events']}")  # fmt: skip
    print(json.dumps({"model": args.model, "split": args.split, **summarise(scores)}))


if __name__ == "__main__":
    main()
