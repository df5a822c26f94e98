"""The one inference loop: views of videos in, batched model calls, one score vector per video out.

Every command that scores videos (classify, evaluate, robustness) feeds this loop an iterable of
`(tag, views)` pairs, where `views` is a (V, T, 3, S, S) tensor of one video's clips and crops (or
None for a video that failed to decode) and `tag` is whatever the caller needs to recognise the video
again. Views of consecutive videos are packed into model calls of `batch_size` clips; a video's scores
come out, in input order, as soon as all its views are scored, so only the scores of unfinished
videos are held, however many videos there are.

The views of one video are combined as the model's protocol says: the mean of their logits
(`average="logits"`), the mean of their probabilities (`"prob"`), or not at all (`None`: the (V, C)
logits, as the stride sweep needs one score per stride).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch

from vtempo.runtime import autocast

AVERAGES = ("logits", "prob", None)


@dataclass
class _Pending:
    tag: Any
    total: int
    parts: list[torch.Tensor] = field(default_factory=list)
    scored: int = 0

    @property
    def done(self) -> bool:
        return self.scored == self.total


def combine(logits: torch.Tensor, average: str | None) -> torch.Tensor:
    """One video's (V, C) view logits → its scores: (C,) mean logits or mean probabilities, or (V, C)."""
    if average is None:
        return logits
    if average == "prob":
        return logits.softmax(-1).mean(0)
    return logits.mean(0)


def probabilities(scores: torch.Tensor, average: str) -> torch.Tensor:
    """Class probabilities from combined scores (mean logits are turned into probabilities here)."""
    return scores if average == "prob" else scores.softmax(-1)


class Engine:
    """A model on its device, called in batches of `batch_size` clips under `dtype` autocast."""

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: str = "fp32", batch_size: int = 8):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model, self.device, self.dtype, self.batch_size = model, device, dtype, batch_size

    def logits(self, clips: torch.Tensor) -> torch.Tensor:
        """fp32 logits on the CPU for a batch of clips (N, T, 3, S, S)."""
        # entered per call, never around a generator: the caller's code between results must not run
        # under inference mode or autocast
        with torch.inference_mode(), autocast(self.device, self.dtype):
            return self.model(clips.to(self.device, non_blocking=True)).float().cpu()

    def scores(self, items: Iterable[tuple[Any, torch.Tensor | None]],
               average: str | None = "logits") -> Iterator[tuple[Any, torch.Tensor | None]]:
        """(tag, combined scores) for every (tag, views) item, in order; None for items without views."""
        if average not in AVERAGES:
            raise ValueError(f"average must be logits, prob or None, got {average!r}")
        pending: deque[_Pending] = deque()
        batch: list[tuple[_Pending, torch.Tensor]] = []
        filled = 0
        for tag, views in items:
            video = _Pending(tag, 0 if views is None else len(views))
            pending.append(video)
            start = 0
            while views is not None and start < len(views):
                take = min(self.batch_size - filled, len(views) - start)
                batch.append((video, views[start : start + take]))
                filled += take
                start += take
                if filled == self.batch_size:
                    self._run(batch)
                    batch, filled = [], 0
            while pending and pending[0].done:
                yield self._finish(pending.popleft(), average)
        if batch:
            self._run(batch)
        while pending:
            yield self._finish(pending.popleft(), average)

    def _run(self, batch: list[tuple[_Pending, torch.Tensor]]) -> None:
        logits = self.logits(torch.cat([views for _, views in batch]))
        start = 0
        for video, views in batch:
            video.parts.append(logits[start : start + len(views)])
            video.scored += len(views)
            start += len(views)

    @staticmethod
    def _finish(video: _Pending, average: str | None) -> tuple[Any, torch.Tensor | None]:
        if not video.total:
            return video.tag, None
        return video.tag, combine(torch.cat(video.parts), average)
