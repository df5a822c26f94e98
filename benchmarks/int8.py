"""int8 against fp32 on the bundled demo models: top-1 and agreement on a freshly rendered synthetic
test set (the int8 graph lowered but not compiled: compiling changes no logit beyond float rounding,
and speed is measured at R-50 scale by `benchmarks.variants int8`). `python -m benchmarks.int8 [--clips 200] [--seed 7] [MODEL...]`."""
from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

from benchmarks import as_the_program
from vtempo.data.synth import CLASSES, render_clip
from vtempo.fast.quantize import quantize
from vtempo.inference.recognizer import load
from vtempo.video.sampling import clip_indices
from vtempo.video.transforms import make_views

DEMOS = ("tsn-demo", "tsm-demo", "tam-demo", "tcm-demo", "stc-demo", "stc-light-demo", "tefe-demo", "tsi-demo",
         "tsm-online-demo", "tcm-timeline-demo")


def synthetic_views(rec, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` clips rendered with `seed` (classes in turn), sampled and preprocessed as the model tests."""
    plan = rec.plan()
    inputs, labels = [], []
    for index in range(count):
        label = index % len(CLASSES)
        frames = render_clip(label, seed=[seed, label, index]).frames
        chosen = clip_indices(plan.protocol, len(frames), plan.frames, 1)[0]
        inputs.append(make_views(np.asarray(frames)[list(chosen)], plan.preprocess, 1))
        labels.append(label)
    return torch.cat(inputs), torch.tensor(labels)


def compare(name: str, clips: int, seed: int, calibration: int, batch: int) -> dict:
    rec = load(name, device="cpu")
    views, labels = synthetic_views(rec, clips, seed)
    calib, _ = synthetic_views(rec, calibration, seed + 1000)  # other clips than the test set's
    fp32 = rec.model
    started = time.perf_counter()
    int8 = quantize(copy.deepcopy(fp32), [calib[i : i + batch] for i in range(0, len(calib) - batch + 1, batch)],
                    compile=False)
    with torch.inference_mode():
        batches = [views[i : i + batch] for i in range(0, len(views) - batch + 1, batch)]
        exact = torch.cat([fp32(b) for b in batches]).argmax(-1)
        first = int8(batches[0])
        setup = time.perf_counter() - started
        reduced = torch.cat([first, *[int8(b) for b in batches[1:]]]).argmax(-1)
    truth = labels[: len(exact)]
    return {
        "model": name, "clips": len(exact),
        "top1_fp32": float((exact == truth).float().mean() * 100), "top1_int8": float((reduced == truth).float().mean() * 100),
        "agreement": float((exact == reduced).float().mean() * 100), "int8_setup_s": setup,
    }


def main() -> None:
    as_the_program()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", nargs="*", default=list(DEMOS))
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for name in args.models:
        try:
            print(json.dumps(compare(name, args.clips, args.seed, args.calibration, args.batch)), flush=True)
        except Exception as error:  # noqa: BLE001 - report and go on with the next model
            print(json.dumps({"model": name, "error": f"{type(error).__name__}: {error}"}), flush=True)


if __name__ == "__main__":
    main()
