"""`vtempo embed`: a video's vector is the model's own pre-head features averaged over views and frames;
the same clip gives the same vector whatever the batch size and worker count; the index matches the
rows; per-frame and windowed rows; bad files are reported and skipped."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vtempo.cli import app
from vtempo.inference.recognizer import load
from vtempo.inference.decoding import ViewPlan, decode_views
from vtempo.inference.embed import EmbeddingWriter, embed

ROOT = Path(__file__).resolve().parent.parent
CLIPS = sorted((ROOT / "examples" / "clips").glob("*.mp4"))
MODEL = "tsm-demo"


@pytest.fixture(scope="module")
def rec():
    return load(MODEL, device="cpu")


def vectors(rec, videos, **options) -> list[np.ndarray]:
    return [video.vectors for video in embed(rec, videos, **options)]


def test_the_vector_is_the_models_pre_head_feature(rec):
    clip = CLIPS[0]
    [vector] = vectors(rec, [clip])
    views = decode_views(clip, ViewPlan(rec.frames, rec.protocol, rec.protocol.clips, rec.protocol.crop, rec.preprocess))["views"]
    with torch.inference_mode():
        features = rec.model.features(views)  # (V, T, C)
        logits = rec.model(views).mean(0)
    assert vector.shape == (1, features.shape[-1])
    np.testing.assert_allclose(vector[0], features.mean((0, 1)).numpy(), rtol=0, atol=1e-5)
    with torch.inference_mode():  # the head is linear: it scores the vector as it scored the frames
        head = rec.model.fc(torch.from_numpy(vector[0]))
    torch.testing.assert_close(head, logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [{}, {"window": 0.6, "hop": 0.3}, {"per_frame": True, "views": "2x1"}])
def test_same_clip_same_vector_whatever_the_batch_size_and_workers(rec, mode):
    videos = [CLIPS[0], CLIPS[1], CLIPS[0]]
    first = vectors(rec, videos, batch_size=1, workers=0, **mode)
    second = vectors(rec, videos, batch_size=8, workers=2, **mode)
    assert len(first[0]) >= (2 if mode else 1)
    for a, b in zip(first, second):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    np.testing.assert_allclose(first[0], first[2], rtol=0, atol=1e-5)
    assert np.abs(first[0] - first[1]).max() > 1e-3  # different clips, different vectors


def test_index_matches_the_rows(rec, tmp_path):
    out = tmp_path / "rows.npy"
    writer = EmbeddingWriter(out, {"model": MODEL, "weights_sha256": rec.weights_sha256})
    results = list(embed(rec, CLIPS[:2], per_frame=True, workers=0))
    for video in results:
        writer.write(video)
    writer.close()
    array = np.load(out)
    index = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert array.dtype == np.float32 and array.shape == (2 * rec.frames, results[0].vectors.shape[1])
    assert [r["row"] for r in index] == list(range(len(array)))
    assert [Path(r["path"]).name for r in index] == [CLIPS[0].name] * rec.frames + [CLIPS[1].name] * rec.frames
    assert {r["model"] for r in index} == {MODEL} and index[0]["weights_sha256"] == rec.weights_sha256
    frames = [r["frame"] for r in index[: rec.frames]]
    assert frames == sorted(frames) and len(set(frames)) == rec.frames
    np.testing.assert_array_equal(array[: rec.frames], results[0].vectors)
    np.testing.assert_array_equal(array[rec.frames :], results[1].vectors)


@pytest.mark.slow
def test_cli_writes_npz_or_npy_with_csv_index_and_skips_bad_files(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    runner = CliRunner()
    npz = tmp_path / "all.npz"
    result = runner.invoke(app, ["embed", str(CLIPS[0]), str(bad), str(CLIPS[1]), "--model", MODEL, "--output", str(npz),
                                 "--workers", "0", "--normalize"])
    assert result.exit_code == 1, result.output
    assert "broken.mp4" in result.output and "2 vector(s)" in result.output
    archive = np.load(npz, allow_pickle=False)
    index = [json.loads(row) for row in archive["index"]]
    assert archive["embeddings"].shape[0] == len(index) == 2
    assert [Path(r["path"]).name for r in index] == [CLIPS[0].name, CLIPS[1].name]
    np.testing.assert_allclose(np.linalg.norm(archive["embeddings"], axis=1), 1.0, rtol=1e-5)

    npy, table = tmp_path / "win.npy", tmp_path / "win.csv"
    result = runner.invoke(app, ["embed", str(CLIPS[0]), "--model", MODEL, "--output", str(npy), "--index", str(table),
                                 "--window", "0.5", "--workers", "0"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == len(np.load(npy)) > 1
    assert [float(r["start"]) for r in rows] == sorted(float(r["start"]) for r in rows)
    assert all(float(r["end"]) - float(r["start"]) == pytest.approx(0.5) for r in rows)


def test_usage_errors(rec, tmp_path):
    from vtempo.errors import UsageError

    with pytest.raises(UsageError, match="hop needs window"):
        list(embed(rec, CLIPS[:1], hop=1.0))
    with pytest.raises(UsageError, match="one of per_frame and window"):
        list(embed(rec, CLIPS[:1], per_frame=True, window=1.0))
    # the command line names the same parameters by its options
    result = CliRunner().invoke(app, ["embed", str(CLIPS[0]), "--model", MODEL, "--per-frame", "--window", "1",
                                      "--output", str(tmp_path / "e.npy")])
    assert result.exit_code == 2 and "error: choose one of --per-frame and --window" in result.output, result.output
    with pytest.raises(UsageError, match=r"\.npy or \.npz"):
        EmbeddingWriter(tmp_path / "x.txt", {})
