"""Frame accuracy on a matrix of containers, codecs and oddities (tests/framematrix.py makes the files).

Every backend `auto` tries, and "auto", gets each file's true frames (FFmpeg's sequential decode) at the
last, the first, random unsorted repeated and all indices, with the true count, or refuses the file
(on opening, or with an error on reading, never with a wrong frame); "auto" reads every file FFmpeg
decodes. A few cases run by default, the rest are marked slow.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import framematrix  # noqa: E402

from vtempo.video import auto_backends, available_backends

# the backends `auto` tries, and auto itself: true frames or a refusal on every case
TRUSTED = [*auto_backends(), "auto"]
# by name only: they stay out of `auto` while they misread a case (docs/decoding.md)
NAMED_ONLY = [name for name in available_backends() if name not in auto_backends()]
# A packet in the middle of the file that the decoder rejects, in a file PyAV can seek: PyAV numbers
# frames by packets and learns of the packet only when a read passes it (docs/decoding.md, known limit);
# the reads `check` makes that stay before or after it are numbered one too high past it.
REJECTED_PACKET = {("corrupt_mjpeg.avi", "pyav"), ("corrupt_mjpeg.avi", "auto")}


def _marks(name: str, backend: str = ""):
    marks = () if name in framematrix.FAST else (pytest.mark.slow,)
    if (name, backend) in REJECTED_PACKET:
        marks += (pytest.mark.xfail(strict=True, reason="a rejected packet PyAV's reads do not pass is found "
                                    "only by sequential decoding: `check-videos --verify` or `--backend sequential`"),)
    return marks


@pytest.fixture(scope="session")
def frame_matrix(tmp_path_factory) -> framematrix.Matrix:
    return framematrix.Matrix(tmp_path_factory.mktemp("frame_matrix"))


@pytest.mark.parametrize(
    "name,backend",
    [pytest.param(name, backend, marks=_marks(name, backend), id=f"{name}-{backend}")
     for name in framematrix.CASE_NAMES for backend in TRUSTED],
)
def test_exact_frames_or_refused(frame_matrix, name, backend):
    case = frame_matrix.case(name)
    verdict = framematrix.check(case, backend)
    picked = f" (read by {verdict.backend})" if verdict.backend and verdict.backend != backend else ""
    assert verdict.status != "WRONG", f"{name} [{case.about}] with {backend}{picked}: {verdict.detail}"


@pytest.mark.slow
@pytest.mark.parametrize("backend", NAMED_ONLY)
def test_backends_left_out_of_auto_misread_a_case(frame_matrix, backend):
    """decord (and torchcodec where installed) stay out of `auto` because the matrix catches them giving
    wrong frames without an error; a release that reads every case right fails this test, and may go back."""
    wrong = [name for name in framematrix.CASE_NAMES
             if framematrix.check(frame_matrix.case(name), backend).status == "WRONG"]
    assert wrong, f"{backend} reads every case right: it can join auto"


def test_check_videos_verify_finds_the_rejected_packet(frame_matrix):
    """What PyAV's seeking cannot see, the verification does: the count against sequential decoding."""
    from vtempo.video.check import check_video

    case = frame_matrix.case("corrupt_mjpeg.avi")
    checked = check_video(case.path, frames=2, backend="pyav", verify=True)  # reads that miss the packet
    assert not checked.ok and f"pyav counts 50 frames, sequential decoding {case.frames}" in checked.error
    assert framematrix.check(case, "sequential").status == "ok"


B_FRAMES = ("_bf", "opengop", "hevc", "mpeg2", "packed", "vfr", "editlist", "rotate", "last_garbage",
            "truncated.", "truncated_xvid", "corrupt.mp4", "corrupt_xvid")
SHORT_HEADER = ("header_more.avi", "last_garbage.mp4", "truncated.mp4", "truncated_xvid.avi",
                "truncated_mjpeg.avi", "divx_packed.avi", "editlist.mp4")


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in framematrix.CASE_NAMES])
def test_case_has_its_oddity(frame_matrix, name):
    """Each generated file is what its name says, and its truth is frames of the picture sequence."""
    case = frame_matrix.case(name)
    facts = case.facts
    assert case.frames >= 20
    if any(key in name for key in B_FRAMES):
        assert facts["b_frames"] > 0
    if "opengop" in name or "hevc" in name:
        assert facts["leading_packets"] > 0  # frames decoded after a key frame but shown before it
    if name in ("h264_bf3.avi", "divx_packed.avi"):
        assert facts["pts_out_of_order"] > 0  # the container's timestamps are not presentation times
    if "packed" in name:
        assert facts["packed_packets"] > 0
    if name.startswith("vfr"):
        assert facts["frame_gaps"] >= 2
    if name == "editlist.mp4":
        assert facts["discarded_packets"] > 0 and case.bars[0] > 0
    if name.startswith("rotate"):
        assert case.rotation == int(name.split(".")[0][6:]) and case.truth.shape[1:3] == framematrix.SIZE[::-1]
    if name in SHORT_HEADER:
        assert facts["header_frames"] > case.frames
    if name.startswith("truncated"):
        assert case.frames < framematrix.N
    if name.startswith("corrupt"):
        assert facts["frames_damaged"] + facts["frames_lost"] > 0
    else:  # intact pictures: the bars count up by one (a cut file's last frame may be a partial one)
        bars = case.bars[:-2] if name.startswith("truncated") else case.bars
        assert bars == list(range(bars[0], bars[0] + len(bars)))


def test_a_wrong_frame_is_reported(frame_matrix):
    """The check itself: a reader that returns a neighbouring frame, or miscounts, is WRONG."""
    case = frame_matrix.case("h264_bf3.mp4")
    shifted = framematrix.Case(case.name, case.path, case.about, case.truth[[0, *range(case.frames - 1)]],
                               case.bars, case.rotation, case.error, case.facts, case.tolerance)
    verdict = framematrix.check(shifted, "pyav")
    assert verdict.status == "WRONG" and "frames wrong" in verdict.detail and "1→truth 2" in verdict.detail
    shorter = framematrix.Case(case.name, case.path, case.about, case.truth[:-1], case.bars[:-1], case.rotation,
                               case.error, case.facts, case.tolerance)
    assert "count 50, true 49" in framematrix.check(shorter, "pyav").detail
