"""Time per label of online TSM against recomputing an 8-frame window (same weights), A/B alternated:
`python -m benchmarks.online`."""
import statistics
import time

import torch

import vtempo
from benchmarks import as_the_program
from vtempo.fast import prepare
from vtempo.models.tsm import OnlineTSM


def main() -> None:
    as_the_program()
    torch.manual_seed(0)
    model = prepare(vtempo.create_model("tsm-r50", shift="online", num_classes=400), torch.device("cpu"))
    frames = torch.randn(24, 3, 224, 224)
    runner = OnlineTSM(model)
    online, window = [], []
    with torch.inference_mode():
        for t in range(8):  # warm-up, and the cache holds 8 frames of past
            runner.step(frames[t][None])
        model(frames[None, :8])
        for t in range(8, 20):  # alternate: one new frame online, then the same label by recomputing 8 frames
            start = time.perf_counter(); runner.step(frames[t][None]); online.append(time.perf_counter() - start)
            start = time.perf_counter(); model(frames[None, t - 7 : t + 1]); window.append(time.perf_counter() - start)
    a, b = statistics.median(online), statistics.median(window)
    print(f"online {1000 * a:.0f} ms/label, 8-frame window {1000 * b:.0f} ms/label, ratio {b / a:.2f}x over {len(online)} labels")


if __name__ == "__main__":
    main()
