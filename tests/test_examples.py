"""The README's first command (`vtempo classify examples/clips` with the bundled default demo model) and its Python example."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vtempo.cli import app
from vtempo.weights.registry import load_registry

ROOT = Path(__file__).resolve().parent.parent


def test_readme_first_command_classifies_the_examples_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("VTEMPO_HOME", str(tmp_path))
    monkeypatch.setenv("VTEMPO_OFFLINE", "1")
    out = tmp_path / "results.jsonl"
    result = CliRunner().invoke(app, ["classify", str(ROOT / "examples" / "clips"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    clips = sorted(p.name for p in (ROOT / "examples" / "clips").iterdir())
    assert sorted(Path(row["path"]).name for row in rows) == clips
    labels = set((ROOT / "vtempo" / "weights" / "labels" / "synth10.txt").read_text().split())
    assert all(row["top"][0]["label"] in labels for row in rows), rows[0]


def test_bundled_demo_weights_match_their_registry_hashes():
    import hashlib

    demos = {name: entry for name, entry in load_registry().items() if name.endswith("-demo")}
    assert demos
    for name, entry in demos.items():
        path = ROOT / "vtempo" / "weights" / "bundled" / entry.weights.bundled
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.weights.sha256, name


def test_bundled_demos_fit_the_size_budget_and_leave_a_4x4_map():
    import torch

    import vtempo

    demos = {name: entry for name, entry in load_registry().items() if name.endswith("-demo")}
    total = sum((ROOT / "vtempo" / "weights" / "bundled" / entry.weights.bundled).stat().st_size for entry in demos.values())
    assert total <= 15 * 1024 * 1024, total
    for name, entry in demos.items():
        model = vtempo.create_model(name, weights=None)
        clip = torch.zeros(1, entry.frames, 3, entry.input_size, entry.input_size)
        shapes = []
        model.backbone.layer4.register_forward_hook(lambda module, args, out: shapes.append(out.shape))
        with torch.no_grad():
            model(clip)
        assert min(shapes[0][-2:]) >= 4, (name, shapes)  # the map Grad-CAM sees


@pytest.mark.slow  # a fresh interpreter importing torch
def test_readme_python_example_runs_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text()
    example = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    result = subprocess.run([sys.executable, "-c", example], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "VTEMPO_OFFLINE": "1", "VTEMPO_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[0] == "move_left" and len(lines) == 3 + len(list((ROOT / "examples" / "clips").glob("*.mp4")))
