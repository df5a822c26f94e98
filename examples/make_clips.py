"""Write the example clips in examples/clips/: one clip of six synthetic classes, named by class.

    python examples/make_clips.py            # rewrites examples/clips/ (same bytes every time)

They come from the same renderer as `vtempo synth`, with a seed no training or test set uses, so the
demo models have never seen them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vtempo.data.synth import CLASSES, render_clip, write_video

SEED = 20240  # not 0 (training), 1 (test) or 1000 (validation)
EXAMPLES = ("move_left", "move_right", "rotate_cw", "rotate_ccw", "grow", "shrink")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path(__file__).parent / "clips")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in EXAMPLES:
        clip = render_clip(name, [SEED, CLASSES.index(name), 0])
        write_video(args.out / f"{name}.mp4", clip.frames)
    print(f"wrote {len(EXAMPLES)} clips to {args.out}")


if __name__ == "__main__":
    main()
