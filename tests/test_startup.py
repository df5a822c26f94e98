"""Start-up: which modules `import vtempo`, `vtempo --help` and a one-clip classify load.

Each runs in a fresh interpreter. Heavy modules that no such command needs (torchvision with its
detection ops, which bring torch._dynamo and sympy) must stay out; torch itself waits for a command
that runs a model, and the YAML registry (with the downloader's HTTP stack) and PyAV for one that reads
them. OpenCV is imported by `import vtempo` on purpose, before torch (see vtempo/__init__.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vtempo.models.resnet as ours
from vtempo.models import build

REPO = Path(__file__).resolve().parents[1]
NEVER = ("torchvision", "torch._dynamo", "sympy", "triton")
NOT_FOR_HELP = ("yaml", "urllib.request", "av")  # the registry, the downloader, the PyAV backend


def loaded_after(code: str, home: Path, watched=(*NEVER, "torch")) -> tuple[list[str], str]:
    """The modules of `watched` that are in sys.modules after running `code`, and its output."""
    probe = f"{code}\nimport json, sys\nprint('MODULES', json.dumps(sorted(m for m in {tuple(watched)!r} if m in sys.modules)))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               VTEMPO_HOME=str(home))
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("MODULES "))
    return json.loads(line.split(" ", 1)[1]), done.stdout + done.stderr


def cli(*args: str) -> str:
    return ("import sys\nfrom vtempo.cli import app\n"
            f"sys.argv = ['vtempo', *{list(args)!r}]\n"
            "try:\n    app()\nexcept SystemExit as end:\n    assert end.code in (0, None), end.code\n")


def test_import_vtempo_loads_no_torch_registry_or_pyav(tmp_path):
    assert loaded_after("import vtempo", tmp_path, (*NEVER, "torch", *NOT_FOR_HELP))[0] == []


@pytest.mark.parametrize("args", [["--help"], ["classify", "--help"], ["download", "--help"], ["--version"]])
def test_help_loads_no_torch_registry_or_pyav(tmp_path, args):
    modules, output = loaded_after(cli(*args), tmp_path, (*NEVER, "torch", *NOT_FOR_HELP))
    assert modules == [], output


def test_a_command_that_runs_no_model_loads_no_torch(tmp_path):
    """Every command imports the downloader (`vtempo.weights.hub`, with the registry) before it runs;
    they import torch only to read a checkpoint, so rendering the synthetic set loads none."""
    modules, output = loaded_after(cli("synth", str(tmp_path / "clips"), "--clips", "1"), tmp_path)
    assert "wrote 10 clips" in output
    assert modules == [], output


def test_a_one_clip_classify_loads_torch_and_nothing_heavy_besides(tmp_path):
    clip = REPO / "examples" / "clips" / "grow.mp4"
    modules, output = loaded_after(cli("classify", str(clip), "--model", "tsn-demo", "--workers", "0",
                                       "--device", "cpu"), tmp_path)
    assert "1 classified, 0 failed" in output
    assert modules == ["torch"], output


def test_the_resnets_have_torchvisions_names_and_weights():
    """Same parameter names, shapes and, for one seed, values as torchvision's ResNets: its ImageNet
    state dicts load into vtempo's backbones and seeded runs stay reproducible."""
    torchvision = pytest.importorskip("torchvision.models.resnet")
    import torch

    for depth, theirs in ((18, torchvision.resnet18), (50, torchvision.resnet50)):
        torch.manual_seed(0)
        reference = theirs().state_dict()
        torch.manual_seed(0)
        block = ours.BasicBlock if depth == 18 else ours.Bottleneck
        mine = ours.ResNet(block, [2, 2, 2, 2] if depth == 18 else [3, 4, 6, 3]).state_dict()
        assert list(mine) == list(reference)
        assert all(torch.equal(mine[name], reference[name]) for name in reference)
    torch.manual_seed(0)
    model = build("tsm-r18", frames=4).eval()
    clip = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(model(clip)).all()
