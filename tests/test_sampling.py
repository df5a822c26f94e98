"""Frame sampling: the reference protocols' indices, valid for every video length."""
from __future__ import annotations

import random

import pytest

from vtempo.video.sampling import (
    clip_indices,
    dense_indices,
    segment_offset_indices,
    stride_indices,
    twice_indices,
    uniform_indices,
)
from vtempo.weights.registry import Protocol

LENGTHS = [1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 100, 257, 1000]
FRAMES = [1, 2, 3, 4, 8, 16, 32]


def tsm_test_offsets(num_frames: int, segments: int) -> list[int]:
    """TSM's test-time segment sampling, written out from its formula (0-based)."""
    tick = num_frames / segments
    return [int(tick / 2.0 + tick * x) for x in range(segments)]


def test_uniform_test_takes_segment_centres():
    assert uniform_indices(80, 8) == [5, 15, 25, 35, 45, 55, 65, 75]
    for n in LENGTHS:
        for t in FRAMES:
            assert uniform_indices(n, t) == tsm_test_offsets(n, t), (n, t)


def test_uniform_train_draws_one_frame_inside_each_segment():
    rng = random.Random(0)
    seen = set()
    for _ in range(200):
        indices = uniform_indices(80, 8, train=True, rng=rng)
        for segment, index in enumerate(indices):
            assert 10 * segment <= index < 10 * (segment + 1)
        seen.add(tuple(indices))
    assert len(seen) > 150  # really random
    assert uniform_indices(80, 8, True, random.Random(3)) == uniform_indices(80, 8, True, random.Random(3))


def test_twice_adds_segment_starts():
    assert twice_indices(80, 4) == [10, 30, 50, 70, 0, 20, 40, 60]
    assert clip_indices(Protocol(sampling="twice", clips=2), 80, 4) == [[10, 30, 50, 70], [0, 20, 40, 60]]
    assert clip_indices(Protocol(sampling="twice", clips=2), 80, 4, clips=1) == [[10, 30, 50, 70]]


def test_dense_stride_and_windows():
    # 8 frames at stride 64 // 8 = 8 in a centred 64-frame window for one clip
    assert dense_indices(300, 8) == [118 + 8 * i for i in range(8)]
    assert dense_indices(300, 16) == [118 + 4 * i for i in range(16)]
    # ten windows at test, starts spread over [0, n - 64] as the reference's linspace (floored)
    ten = dense_indices(300, 8, clips=10)
    starts = ten[::8]
    assert starts == [int(236 * c / 9) for c in range(10)]
    assert all(ten[8 * c : 8 * c + 8] == [s + 8 * i for i in range(8)] for c, s in enumerate(starts))


def test_dense_wraps_short_videos_like_the_reference():
    # TSM: (idx * t_stride + start) % num_frames
    assert dense_indices(40, 8) == [(8 * i) % 40 for i in range(8)]
    assert dense_indices(40, 8, clips=10) == [(8 * i) % 40 for i in range(8)] * 10


def test_dense_train_window_inside_video():
    rng = random.Random(1)
    for _ in range(50):
        indices = dense_indices(200, 8, train=True, rng=rng)
        assert indices == [indices[0] + 8 * i for i in range(8)]
        assert 0 <= indices[0] <= 200 - 64


def test_stride_pads_with_last_frame():
    assert stride_indices(100, 4, 8, start=10) == [10, 18, 26, 34]
    assert stride_indices(20, 8, 4) == [0, 4, 8, 12, 16, 19, 19, 19]
    assert stride_indices(5, 3, 10, start=99) == [4, 4, 4]
    with pytest.raises(ValueError):
        stride_indices(10, 2, 0)


def test_stride_protocol_centres_its_window():
    protocol = Protocol(sampling="stride", stride=4)
    assert clip_indices(protocol, 100, 8) == [[35 + 4 * i for i in range(8)]]  # span 29, start (100-29)//2
    three = clip_indices(protocol, 100, 8, clips=3)
    assert [clip[0] for clip in three] == [0, 35, 71]


def test_uniform_multi_clip_offsets():
    clips = clip_indices(Protocol(clips=2), 80, 4)
    assert clips == [segment_offset_indices(80, 4, 0.25), segment_offset_indices(80, 4, 0.75)]
    assert clips == [[5, 25, 45, 65], [15, 35, 55, 75]]


@pytest.mark.parametrize("sampling", ["uniform", "twice", "dense", "stride"])
def test_every_protocol_gives_valid_clips_for_any_length(sampling):
    rng = random.Random(0)
    for n in LENGTHS:
        for t in FRAMES:
            for clips in (1, 2, 10):
                for train in (False, True):
                    protocol = Protocol(sampling=sampling, clips=clips, stride=3 if sampling == "stride" else None)
                    result = clip_indices(protocol, n, t, train=train, rng=rng)
                    expected_clips = 1 if train or (sampling == "twice" and clips == 1) else (2 if sampling == "twice" else clips)
                    assert len(result) == expected_clips, (sampling, n, t, clips, train)
                    for clip in result:
                        assert len(clip) == t
                        assert all(0 <= i < n for i in clip), (sampling, n, t, clip)


def test_bad_arguments():
    with pytest.raises(ValueError):
        uniform_indices(0, 8)
    with pytest.raises(ValueError):
        uniform_indices(10, 0)
    with pytest.raises(ValueError):
        clip_indices(Protocol(sampling="stride"), 10, 2)
