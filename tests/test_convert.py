"""Reading reference checkpoints: every layout of the manifests (keys and shapes of the official and
MMAction2 models' state dicts) loads into the matching vtempo model with each tensor in its place;
anything that does not fit fails naming the keys; `vtempo convert` writes a clean vtempo checkpoint.

The manifests (keys and shapes of each published state dict) are stored in tests/data/manifests.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vtempo.cli import app
from vtempo.errors import VtempoError
from vtempo.models import build
from vtempo.weights.checkpoint import (
    FORMAT,
    convert_file,
    infer_arch,
    load_weights,
    save_checkpoint,
)

MANIFESTS = Path(__file__).parent / "data" / "manifests"
SHARED_MANIFESTS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "manifests"

# manifest → (architecture, classes, frames, container the released files use)
EXPECTED = {
    "tsn_r50_official": ("tsn-r50", 400, 8, "official"),
    "tsm_r50_official": ("tsm-r50", 400, 8, "official"),
    "tanet_r50_k400_official": ("tam-r50", 400, 8, "official"),
    "tanet_r50_sthv1_official": ("tam-r50", 174, 8, "official"),
    "tcm_r50_official": ("tcm-r50", 174, 8, "official"),
    "mmaction2_tsn_r50_k400": ("tsn-r50", 400, 8, "mmaction2"),
    "mmaction2_tsm_r50_k400": ("tsm-r50", 400, 8, "mmaction2"),
    "mmaction2_tanet_r50_k400": ("tam-r50", 400, 8, "mmaction2"),
    "mmaction2_tanet_r50_sthv1": ("tam-r50", 174, 8, "mmaction2"),
}

# Hand-read correspondences: source key (without prefix) → vtempo module path.
SPOT_CHECKS = {
    "tsn_tsm_tcm_official": {
        "base_model.bn1.running_var": "backbone.bn1.running_var",
        "base_model.layer1.0.downsample.1.bias": "backbone.layer1.0.downsample.1.bias",
        "base_model.layer3.5.bn2.weight": "backbone.layer3.5.bn2.weight",
        "new_fc.bias": "fc.bias",
    },
    "tsm_r50_official": {"base_model.layer2.1.conv1.net.weight": "backbone.layer2.1.conv1.net.weight"},
    "tsn_r50_official": {"base_model.layer2.1.conv1.weight": "backbone.layer2.1.conv1.weight"},
    "tanet": {
        "base_model.layer1.0.net.conv2.weight": "backbone.layer1.0.conv2.conv.weight",
        "base_model.layer4.2.net.bn3.running_mean": "backbone.layer4.2.bn3.running_mean",
        "base_model.layer2.3.tam.G.3.weight": "backbone.layer2.3.conv2.tam.global_branch.3.weight",
        "base_model.layer3.1.tam.L.1.running_mean": "backbone.layer3.1.conv2.tam.local_branch.1.running_mean",
    },
    "tcm_r50_official": {
        "base_model.layer1.0.conv1.weight": "backbone.layer1.0.conv1.net.weight",
        "base_model.tcm_layer.mtdm.chnl_reduction.1.bias": "backbone.layer2.tcm.dynamics.reduce.1.bias",
        "base_model.tcm_layer.tam.conv1.9.weight": "backbone.layer2.tcm.attention.conv1.9.weight",
        "base_model.tcm_layer.tam.ETA.conv.weight": "backbone.layer2.tcm.attention.temporal_gate.weight",
    },
    "mmaction2": {
        "backbone.conv1.bn.running_mean": "backbone.bn1.running_mean",
        "cls_head.fc_cls.weight": "fc.weight",
    },
    "mmaction2_tsn_r50_k400": {
        "backbone.layer1.0.conv2.bn.bias": "backbone.layer1.0.bn2.bias",
        "backbone.layer2.0.downsample.bn.running_var": "backbone.layer2.0.downsample.1.running_var",
        "backbone.layer3.2.conv1.conv.weight": "backbone.layer3.2.conv1.weight",
    },
    "mmaction2_tsm_r50_k400": {"backbone.layer3.2.conv1.conv.net.weight": "backbone.layer3.2.conv1.net.weight"},
    "mmaction2_tanet": {
        "backbone.layer1.0.block.conv1.bn.weight": "backbone.layer1.0.bn1.weight",
        "backbone.layer1.0.block.downsample.conv.weight": "backbone.layer1.0.downsample.0.weight",
        "backbone.layer2.1.tam.L.3.weight": "backbone.layer2.1.conv2.tam.local_branch.3.weight",
    },
}


def spot_checks(manifest: str) -> dict[str, str]:
    checks: dict[str, str] = {}
    for group, pairs in SPOT_CHECKS.items():
        official_plain = group == "tsn_tsm_tcm_official" and manifest.endswith("official") and "tanet" not in manifest
        if manifest.startswith(group) or official_plain:
            checks.update(pairs)
    return checks


@lru_cache(maxsize=None)
def manifest_keys(name: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    keys = json.loads((MANIFESTS / f"{name}.json").read_text())["keys"]
    return tuple((k, tuple(shape)) for k, shape in keys.items())


@lru_cache(maxsize=1)
def random_values() -> torch.Tensor:
    """One buffer of random numbers, larger than any manifest: states are slices of it."""
    return torch.rand(26_000_000, generator=torch.Generator().manual_seed(0))


def random_state(name: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A state dict with exactly the manifest's keys and shapes; no two tensors share values."""
    values = random_values()
    state, offset = {}, seed * 1000
    for key, shape in manifest_keys(name):
        count = torch.Size(shape).numel()
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(offset, dtype=torch.long)
        else:
            state[key] = values[offset : offset + count].view(shape).to(dtype)
        offset += count
    return state


@lru_cache(maxsize=None)
def model_for(arch: str, classes: int, frames: int) -> torch.nn.Module:
    return build(arch, num_classes=classes, frames=frames)


def assert_each_tensor_placed_once(loaded: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> None:
    """Every model tensor equals exactly one checkpoint tensor, and every checkpoint tensor is used."""
    by_start = {}
    for key, tensor in source.items():
        flat = tensor.reshape(-1)
        by_start[(flat.numel(), tuple(flat[:3].tolist()))] = key
    assert len(by_start) == len(source)
    used = set()
    for model_key, tensor in loaded.items():
        flat = tensor.reshape(-1)
        source_key = by_start.get((flat.numel(), tuple(flat[:3].tolist())))
        assert source_key is not None, f"{model_key} holds no checkpoint tensor"
        assert torch.equal(flat, source[source_key].reshape(-1).to(flat.dtype)), model_key
        used.add(source_key)
    assert used == set(source)


def container(state: dict, layout: str, prefix: str) -> dict:
    state = {prefix + k: v for k, v in state.items()}
    if layout == "mmaction2":
        return {"meta": {"mmaction2_version": "1.0.0", "epoch": 50}, "state_dict": state}
    return {"epoch": 45, "arch": "resnet50", "state_dict": state, "best_prec1": 47.2}


def test_manifest_copies_match_shared():
    assert sorted(p.stem for p in MANIFESTS.glob("*.json")) == sorted(EXPECTED)
    if not SHARED_MANIFESTS.is_dir():
        pytest.skip("no external manifest folder beside the repository to compare the stored copies with")
    for path in SHARED_MANIFESTS.glob("*.json"):
        assert json.loads(path.read_text()) == json.loads((MANIFESTS / path.name).read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_manifest_layout_loads_in_place(name, tmp_path):
    arch, classes, frames, layout = EXPECTED[name]
    model = model_for(arch, classes, frames)
    source = random_state(name, seed=len(name))
    assert infer_arch(source, layout) == arch
    extras = {}
    if layout == "mmaction2":  # weightless buffers some MMAction2 files carry
        extras = {"data_preprocessor.mean": torch.ones(3, 1, 1), "data_preprocessor.std": torch.ones(3, 1, 1)}
    assert load_weights(model, container({**source, **extras}, layout, "")) == layout
    loaded = model.state_dict()
    assert_each_tensor_placed_once(loaded, source)
    for source_key, model_key in spot_checks(name).items():
        torch.testing.assert_close(loaded[model_key], source[source_key].view(loaded[model_key].shape), rtol=0, atol=0)
    if name == "tcm_r50_official":
        torch.testing.assert_close(model.fc.weight.detach(), source["new_fc.weight"][:, :, 0], rtol=0, atol=0)

    # Released files carry a `module.` prefix (DataParallel); other values, so no tensor can be a leftover.
    source = random_state(name, seed=len(name) + 1)
    prefixed = container({**source, **extras}, layout, "module.")
    if name in ("tsm_r50_official", "mmaction2_tanet_r50_sthv1"):  # through a file, as released
        torch.save(prefixed, tmp_path / "checkpoint.pth")
        prefixed = tmp_path / "checkpoint.pth"
    assert load_weights(model, prefixed) == layout
    loaded = model.state_dict()
    for source_key, model_key in spot_checks(name).items():
        torch.testing.assert_close(loaded[model_key], source[source_key].view(loaded[model_key].shape), rtol=0, atol=0)


def test_old_tam_names_load():
    source = random_state("tanet_r50_sthv1_official")
    old = {k.replace(".tam.G.", ".self_conv.conv_f.").replace(".tam.L.", ".self_conv.conv_g."): v for k, v in source.items()}
    assert any("self_conv.conv_f" in k for k in old)
    model = model_for("tam-r50", 174, 8)
    load_weights(model, {"state_dict": {"module." + k: v for k, v in old.items()}})
    torch.testing.assert_close(
        model.backbone.layer1[0].conv2.tam.global_branch[0].weight.detach(),
        source["base_model.layer1.0.tam.G.0.weight"],
        rtol=0,
        atol=0,
    )


def test_unknown_key_is_named():
    source = random_state("tsm_r50_official")
    source["base_model.layer1.0.extra_gate.weight"] = torch.zeros(3)
    expected = r"1 checkpoint keys fit no model key: base_model\.layer1\.0\.extra_gate\.weight"
    with pytest.raises(VtempoError, match=expected):
        load_weights(model_for("tsm-r50", 400, 8), source)


def test_missing_key_is_named():
    source = random_state("tsm_r50_official")
    del source["base_model.layer4.2.bn3.bias"]
    with pytest.raises(VtempoError, match=r"model keys not in the checkpoint: backbone\.layer4\.2\.bn3\.bias"):
        load_weights(model_for("tsm-r50", 400, 8), source)


def test_tsm_weights_never_load_into_tsn():
    # The key sets differ only by the shift wrapper, which canonical names drop: the shift is checked.
    with pytest.raises(VtempoError, match="shifts 16 blocks"):
        load_weights(model_for("tsn-r50", 400, 8), random_state("tsm_r50_official"))


def test_clip_length_mismatch_is_explained():
    with pytest.raises(VtempoError, match="shapes differ.*clip length"):
        load_weights(model_for("tam-r50", 174, 16), random_state("tanet_r50_sthv1_official"))


def test_fp16_checkpoint_is_cast_to_the_model_dtype():
    source = random_state("tsn_r50_official", dtype=torch.float16)
    model = model_for("tsn-r50", 400, 8)
    load_weights(model, source)
    assert model.fc.weight.dtype == torch.float32
    torch.testing.assert_close(model.fc.weight.detach(), source["new_fc.weight"].float(), rtol=0, atol=0)


def test_bad_files_give_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint at all" * 10)
    truncated = tmp_path / "truncated.pth"
    torch.save({"state_dict": {"a": torch.zeros(100)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "hook": Path("x")}, unsafe)
    not_weights = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_weights)
    model = build("tsn-r10w8", num_classes=5)
    for path in (garbage, truncated, unsafe, not_weights, tmp_path / "absent.pth"):
        with pytest.raises(VtempoError) as error:
            load_weights(model, path)
        message = str(error.value)
        assert str(path) in message and "\n" not in message


def test_vtempo_format_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build("tam-r10w8", num_classes=7, frames=4).eval()
    path = save_checkpoint(model, tmp_path / "tam.pt", dataset="demo")
    checkpoint = torch.load(path, weights_only=True)
    assert {k: checkpoint[k] for k in ("format", "arch", "num_classes", "frames", "dataset")} == {
        "format": FORMAT, "arch": "tam-r10w8", "num_classes": 7, "frames": 4, "dataset": "demo"
    }
    fresh = build("tam-r10w8", num_classes=7, frames=4).eval()
    assert load_weights(fresh, path) == "vtempo"
    clip = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(clip), model(clip), rtol=0, atol=0)


def official_tcm_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A vtempo TCM state dict renamed to the official TCM code's keys (tcm_r50_official.json's names)."""
    renames = [
        (r"^backbone\.layer2\.tcm\.dynamics\.reduce\.", "base_model.tcm_layer.mtdm.chnl_reduction."),
        (r"^backbone\.layer2\.tcm\.attention\.temporal_gate\.", "base_model.tcm_layer.tam.ETA.conv."),
        (r"^backbone\.layer2\.tcm\.attention\.", "base_model.tcm_layer.tam."),
        (r"\.conv1\.net\.", ".conv1."),
        (r"^backbone\.", "base_model."),
        (r"^fc\.", "new_fc."),
    ]
    official = {}
    for key, tensor in state.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        official[key] = tensor[..., None] if key == "new_fc.weight" else tensor  # the Conv1d head
    return official


def test_official_tcm_renaming_matches_the_manifest():
    keys = {k for k, _ in manifest_keys("tcm_r50_official")}
    assert set(official_tcm_layout(model_for("tcm-r50", 174, 8).state_dict())) == keys


def test_convert_cli_round_trip(tmp_path):
    torch.manual_seed(5)
    model = build("tcm-r26w16", num_classes=11, frames=8).eval()
    source = official_tcm_layout(model.state_dict())
    src, dst = tmp_path / "sthv1_8f_best.pth", tmp_path / "tcm.pt"
    torch.save(container(source, "official", "module."), src)
    result = CliRunner().invoke(app, ["convert", str(src), str(dst)])
    assert result.exit_code == 0, result.output
    assert "tcm-r26w16" in result.output and "11 classes" in result.output
    written = torch.load(dst, weights_only=True)
    header = (written["format"], written["arch"], written["num_classes"], written["frames"])
    assert header == (FORMAT, "tcm-r26w16", 11, 8)
    assert written["state_dict"].keys() == model.state_dict().keys()
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(written["state_dict"][key], tensor, rtol=0, atol=0)
    # the written file is itself readable, and converting it again changes nothing
    again = tmp_path / "again.pt"
    assert convert_file(dst, again)["layout"] == "vtempo"
    rewritten = torch.load(again, weights_only=True)
    assert rewritten["arch"] == "tcm-r26w16"
    assert all(torch.equal(rewritten["state_dict"][k], v) for k, v in written["state_dict"].items())


def test_convert_cli_reports_unplaceable_keys(tmp_path):
    source = random_state("tsn_r50_official")
    source["base_model.layer9.0.conv1.weight"] = torch.zeros(1)
    src = tmp_path / "bad.pth"
    torch.save({"state_dict": source}, src)
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "out.pt")])
    assert result.exit_code == 1
    assert "base_model.layer9.0.conv1.weight" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.pt").exists()


def test_mmaction2_metadata_with_numpy_values_loads(tmp_path):
    import numpy as np

    model = build("tsn-r10w8", num_classes=3)
    path = tmp_path / "mmaction2.pth"
    renamed = {}  # torchvision names → MMAction2's ConvModule names
    for key, tensor in model.state_dict().items():
        if not key.startswith("backbone."):
            continue
        key = re.sub(r"^backbone\.conv1\.", "backbone.conv1.conv.", key)
        key = re.sub(r"^backbone\.bn1\.", "backbone.conv1.bn.", key)
        key = re.sub(r"(\.layer\d\.\d+\.conv\d)\.weight$", r"\1.conv.weight", key)
        key = re.sub(r"\.bn(\d)\.", r".conv\1.bn.", key)
        key = key.replace(".downsample.0.", ".downsample.conv.").replace(".downsample.1.", ".downsample.bn.")
        renamed[key] = tensor
    renamed["cls_head.fc_cls.weight"], renamed["cls_head.fc_cls.bias"] = model.fc.weight, model.fc.bias
    meta = {"seed": np.int64(7), "epoch": 50, "mean": np.array([123.675, 116.28, 103.53]), "dtype": np.dtype("float32")}
    torch.save({"meta": meta, "state_dict": renamed}, path)
    fresh = build("tsn-r10w8", num_classes=3)
    assert load_weights(fresh, path) == "mmaction2"
    for key, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], tensor), key
