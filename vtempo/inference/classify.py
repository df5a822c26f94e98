"""Classify videos: ranked labels for every file, with decoding overlapped with the model.

    for result in classify(["clips/"], "tsm-demo"):
        print(result.path, result.top[0].label, result.top[0].prob)

Worker processes of a torch DataLoader open each video, pick the frames the model's test protocol
asks for (sampling, clips), decode them and make the views (resize, crops, normalisation); the main
process batches the views of consecutive videos into model calls (`vtempo.inference.engine`) and
combines each video's view scores as the protocol says. Results come out in input order as soon as a
video's views are scored; memory stays flat however many files there are. A file that fails gives a
result with `error` set and the run goes on.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import torch

from vtempo.inference.recognizer import Recognizer, load, parse_views
from vtempo.inference.results import VideoResult

__all__ = ["classify", "parse_views"]

_RUN_OPTIONS = ("views", "topk", "batch_size", "workers", "progress")


def classify(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    model: str | os.PathLike | torch.nn.Module | Recognizer,
    *,
    recursive: bool = False,
    **options: Any,
) -> Iterator[VideoResult]:
    """Classify videos (files, frame folders, or folders of them): an iterator of `VideoResult` in input
    order. The model is loaded (`vtempo.load`: weights, registry, device, dtype, frames, labels) before
    this returns, so a missing checkpoint fails at once; views, topk, batch_size, workers and progress
    go to `Recognizer.classify_files`."""
    run = {key: options.pop(key) for key in _RUN_OPTIONS if key in options}
    recognizer = model if isinstance(model, Recognizer) else load(model, **options)
    return recognizer.classify_files(paths, recursive=recursive, **run)
