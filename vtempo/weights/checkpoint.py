"""Reading reference checkpoints into vtempo models, and vtempo's own checkpoint format.

Layouts read (each with or without a `module.` prefix, bare or inside a `{'state_dict': ...}` container):

- `official`: the reference code of TSN/TSM (mit-han-lab), TAM (liu-zhy; blocks wrapped as
  `layerX.Y.net`, TAM as `layerX.Y.tam`, older files naming it `self_conv.conv_f/conv_g`) and TCM
  (zphyix; `base_model.tcm_layer.{mtdm,tam}`, Conv1d head `new_fc.weight [C, 2048, 1]`):
  keys under `base_model.`, head `new_fc`.
- `mmaction2`: MMAction2 TSN/TSM/TANet (`backbone.` with ConvModule names, `cls_head.fc_cls`).
- `vtempo`: what `save_checkpoint` writes (`{'format': 'vtempo', 'arch', 'num_classes', 'frames',
  'state_dict', ...}`).

Every source key is translated to a canonical name (torchvision ResNet names, vtempo's names for the
temporal modules) and matched with the model's keys brought to the same canonical form. A load is
total: each key lands in exactly one model tensor, or the load fails naming the keys it could not
place and the model keys left empty. Only known weightless keys are skipped (MMAction2's
`data_preprocessor.mean/std`); `num_batches_tracked` counters absent from old files keep their value.
The blocks a checkpoint shifts (TSM) must be the blocks the model shifts, so a TSM checkpoint never
loads silently into a TSN model (their key sets are otherwise identical).
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from vtempo.errors import UsageError, VtempoError

FORMAT = "vtempo"
IGNORED_KEYS = frozenset({"data_preprocessor.mean", "data_preprocessor.std"})
SHOWN_KEYS = 12  # keys named in an error message before "… and N more"

_Rules = list[tuple[re.Pattern[str], str]]


def _rules(*pairs: tuple[str, str]) -> _Rules:
    return [(re.compile(pattern), replacement) for pattern, replacement in pairs]


# vtempo module paths → canonical (the wrappers that TSM and TAM put around conv1/conv2 disappear).
_VTEMPO = _rules(
    (r"\.conv1\.net\.", ".conv1."),
    (r"\.conv2\.tam\.", ".tam."),
    (r"\.conv2\.conv\.", ".conv2."),
)
_TAM_BRANCHES = (
    (r"\.self_conv\.conv_f\.", ".tam.G."),  # TAM files from before the rename
    (r"\.self_conv\.conv_g\.", ".tam.L."),
    (r"\.tam\.G\.", ".tam.global_branch."),
    (r"\.tam\.L\.", ".tam.local_branch."),
)
_OFFICIAL = _rules(
    (r"^base_model\.", "backbone."),
    (r"^new_fc\.", "fc."),
    (r"^backbone\.tcm_layer\.mtdm\.chnl_reduction\.", "backbone.layer2.tcm.dynamics.reduce."),
    (r"^backbone\.tcm_layer\.tam\.ETA\.conv\.", "backbone.layer2.tcm.attention.temporal_gate."),
    (r"^backbone\.tcm_layer\.tam\.", "backbone.layer2.tcm.attention."),
    (r"^(backbone\.layer\d\.\d+)\.net\.", r"\1."),  # TAM's block wrapper
    (r"\.conv1\.net\.", ".conv1."),  # TSM's shift wrapper
    *_TAM_BRANCHES,
)
_MMACTION2 = _rules(
    (r"^cls_head\.fc_cls\.", "fc."),
    (r"^backbone\.conv1\.conv\.", "backbone.conv1."),
    (r"^backbone\.conv1\.bn\.", "backbone.bn1."),
    (r"^(backbone\.layer\d\.\d+)\.block\.", r"\1."),  # TANet's block wrapper
    (r"\.conv(\d)\.conv\.net\.", r".conv\1."),  # TSM's shift wrapper
    (r"\.conv(\d)\.conv\.", r".conv\1."),
    (r"\.conv(\d)\.bn\.", r".bn\1."),
    (r"\.downsample\.conv\.", ".downsample.0."),
    (r"\.downsample\.bn\.", ".downsample.1."),
    *_TAM_BRANCHES,
)
_LAYOUT_RULES = {"official": _OFFICIAL, "mmaction2": _MMACTION2, "vtempo": _VTEMPO}
_BLOCK = re.compile(r"(layer\d\.\d+)\.")


def _canonical(key: str, rules: _Rules) -> str:
    for pattern, replacement in rules:
        key = pattern.sub(replacement, key)
    return key


# ---------------------------------------------------------------------------------------------- reading


def _name(source: Any) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "state dict"


def read_file(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True; any failure is one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise VtempoError(f"{path}: no such checkpoint file")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            if "GLOBAL numpy." not in str(error):
                raise
            # MMAction2/mmengine metadata can hold numpy scalars and arrays: plain data, allowed here.
            with torch.serialization.safe_globals(_numpy_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        raise VtempoError(f"{path}: {_load_failure(error)}") from None


def _load_failure(error: Exception) -> str:
    text = str(error)
    if match := re.search(r"Unsupported global: GLOBAL (\S+)", text):
        return f"holds objects of type {match.group(1)}, which a weights-only load refuses (no code runs from files)"
    if match := re.search(r"WeightsUnpickler error:\s*(.+)", text):
        return f"not a PyTorch checkpoint ({match.group(1).strip()})"
    if "zip archive" in text:
        return "corrupt or truncated checkpoint (its zip archive cannot be read)"
    if isinstance(error, EOFError):
        return "empty or truncated checkpoint"
    first_line = text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__
    return f"not a readable PyTorch checkpoint ({first_line})"


def _numpy_globals() -> list:
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(name)) for name in ("float16", "float32", "float64", "int32", "int64", "bool", "uint8")]
    return [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


def unwrap(obj: Any, name: str = "state dict") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict without `module.` prefixes, container metadata) from anything torch.load returned."""
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VtempoError(
            f"{name}: not a model checkpoint (expected a state dict of tensors, or a container with 'state_dict')"
        )
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    return state, meta


def detect_layout(state: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> str | None:
    if meta and meta.get("format") == FORMAT:
        return "vtempo"
    keys = list(state)
    if any(k.startswith("cls_head.") or k.startswith("backbone.conv1.conv.") for k in keys):
        return "mmaction2"
    if any(k.startswith("base_model.") or k.startswith("new_fc.") for k in keys):
        return "official"
    if any(k.startswith("backbone.") for k in keys) and "fc.weight" in state:
        return "vtempo"
    return None


def read_state(source: Any, expected_layout: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """(state dict, container metadata, layout) from a path or a loaded object."""
    name = _name(source)
    obj = read_file(source) if isinstance(source, (str, os.PathLike)) else source
    state, meta = unwrap(obj, name)
    layout = detect_layout(state, meta)
    if layout is None:
        sample = ", ".join(list(state)[:3])
        hint = f" (expected {expected_layout})" if expected_layout else ""
        raise VtempoError(
            f"{name}: unknown checkpoint layout{hint}: keys like {sample}; "
            f"readable layouts: official TSN/TSM/TAM/TCM, MMAction2, vtempo"
        )
    return state, meta, layout


# ---------------------------------------------------------------------------------------------- placing


def _shifted_blocks(keys: list[str], layout: str) -> set[str]:
    """Blocks whose conv1 input is temporally shifted, read off the keys."""
    marker = ".conv1.conv.net." if layout == "mmaction2" else ".conv1.net."
    shifted = {m.group(1) for k in keys if marker in k and (m := _BLOCK.search(k))}
    if layout == "official" and any(".tcm_layer." in k for k in keys):
        # The official TCM network shifts every block without wrapping conv1.
        shifted = {m.group(1) for k in keys if k.endswith(".conv1.weight") and (m := _BLOCK.search(k))}
    return shifted


def _shifted_model_blocks(model: nn.Module) -> set[str]:
    from vtempo.models.tsm import TemporalShift

    return {
        m.group(1)
        for name, module in model.named_modules()
        if isinstance(module, TemporalShift) and (m := _BLOCK.search(name + "."))
    }


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" … and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else "")


def key_map(model_keys: list[str], source_keys: list[str], layout: str) -> dict[str, str | None]:
    """For each source key (in `layout`), the model key it belongs to, or None."""
    by_canonical = {_canonical(k, _VTEMPO): k for k in model_keys}
    rules = _LAYOUT_RULES[layout]
    return {key: by_canonical.get(_canonical(key, rules)) for key in source_keys}


def map_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], layout: str, name: str = "state dict"
) -> dict[str, torch.Tensor]:
    """The model's full state dict with every source tensor in its place, or a VtempoError."""
    target = model.state_dict()
    destinations = key_map(list(target), list(state), layout)
    placed: dict[str, torch.Tensor] = {}
    unplaced: list[str] = []
    mismatched: list[str] = []
    wrong_shape: set[str] = set()
    for key, tensor in state.items():
        if key in IGNORED_KEYS:
            continue
        model_key = destinations[key]
        if model_key is None or model_key in placed:
            unplaced.append(key)
            continue
        expected = target[model_key]
        if tensor.shape != expected.shape and tensor.dim() == expected.dim() + 1 and tensor.shape[-1] == 1:
            tensor = tensor.squeeze(-1)  # TCM's Conv1d head [C, 2048, 1]
        if tensor.shape != expected.shape:
            mismatched.append(f"{key} {list(tensor.shape)} vs {list(expected.shape)}")
            wrong_shape.add(model_key)
            continue
        placed[model_key] = tensor.to(expected.dtype) if expected.is_floating_point() else tensor
    missing = [k for k in target if k not in placed and k not in wrong_shape and not k.endswith("num_batches_tracked")]
    problems = []
    if unplaced:
        problems.append(f"{len(unplaced)} checkpoint keys fit no model key: {_listing(unplaced)}")
    if missing:
        problems.append(f"{len(missing)} model keys not in the checkpoint: {_listing(missing)}")
    if mismatched:
        problems.append(
            f"{len(mismatched)} shapes differ (checkpoint vs model; a different class count or clip length?): "
            f"{_listing(mismatched)}"
        )
    if not problems:
        source_shifted = _shifted_blocks(list(state), layout)
        model_shifted = _shifted_model_blocks(model)
        if source_shifted != model_shifted:
            problems.append(
                f"the checkpoint shifts {len(source_shifted)} blocks (TSM) and the model {len(model_shifted)}: "
                f"it was trained for another architecture"
            )
    if problems:
        raise VtempoError(f"{name} ({layout} layout) does not fit the model: " + "; ".join(problems))
    return {k: placed.get(k, v) for k, v in target.items()}


def load_weights(model: nn.Module, source: str | os.PathLike | Mapping[str, Any], layout: str | None = None) -> str:
    """Load a checkpoint in any readable layout into `model`; returns the layout it was read as.

    `source` is a file or an already loaded object (a state dict or a container holding one). The
    layout is always read off the keys; `layout` (e.g. the registry's) only names what the caller
    expected in the error when the keys fit no layout, so a file converted by `vtempo convert` still
    loads for a registry entry whose published layout is another.
    """
    state, _, detected = read_state(source, layout)
    model.load_state_dict(map_state(model, state, detected, _name(source)))
    return detected


# ---------------------------------------------------------------------------------------------- writing


def _fixed_frames(model: nn.Module) -> int | None:
    from vtempo.models.base import TemporalModule

    for module in model.modules():
        if isinstance(module, TemporalModule) and module.fixed_frames is not None:
            return module.fixed_frames
    return None


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike, arch: str | None = None, frames: int | None = None, **meta: Any
) -> Path:
    """Write `{'format': 'vtempo', 'arch', 'num_classes', 'frames', 'state_dict', **meta}` (weights_only-safe).

    `arch` defaults to `model.arch` or, for TSN/TSM/TAM/TCM, is read off the weights; `frames` to the
    clip length the model's modules are built for, else 8 (then any T works).
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    arch = arch or getattr(model, "arch", None) or infer_arch(state, "vtempo")
    if arch is None:
        raise UsageError("save_checkpoint: pass arch= (it cannot be read off this model's weights)")
    fixed = _fixed_frames(model)
    if frames is not None and fixed is not None and frames != fixed:
        raise UsageError(f"save_checkpoint: frames={frames} but the model is built for {fixed} frames")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "format": FORMAT,
        "arch": arch,
        "num_classes": int(model.fc.out_features),
        "frames": int(frames or fixed or 8),
        "state_dict": state,
        **meta,
    }
    temporary = path.with_name(path.name + ".part")
    torch.save(checkpoint, temporary)
    temporary.replace(path)
    return path


# ---------------------------------------------------------------------------------------------- converting


def infer_arch(state: Mapping[str, torch.Tensor], layout: str) -> str | None:
    """`<family>-<backbone>` read off the keys (TSN/TSM/TAM/TCM on any vtempo ResNet), else None."""
    from vtempo.models.backbone import DEPTHS

    rules = _LAYOUT_RULES[layout]
    canonical = {_canonical(k, rules): v for k, v in state.items()}
    if "backbone.conv1.weight" not in canonical:
        return None
    if any(".tcm." in k for k in canonical):
        family = "tcm"
    elif any(".tam." in k for k in canonical):
        family = "tam"
    elif _shifted_blocks(list(state), layout):
        family = "tsm"
    else:
        family = "tsn"
    counts = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for k in canonical if (m := re.match(rf"backbone\.layer{stage}\.(\d+)\.", k))}
        counts.append(len(indices))
    bottleneck = any(k.endswith(".conv3.weight") for k in canonical)
    depth = next(
        (d for d, (block, layers) in DEPTHS.items() if layers == counts and (block.expansion == 4) == bottleneck), None
    )
    if depth is None:
        return None
    width = canonical["backbone.conv1.weight"].shape[0]
    return f"{family}-r{depth}" + (f"w{width}" if width != 64 else "")


def infer_frames(state: Mapping[str, torch.Tensor], layout: str) -> int | None:
    """The clip length TAM's global branch was built for (its first layer is [2T, T]), else None."""
    rules = _LAYOUT_RULES[layout]
    for key, tensor in state.items():
        if _canonical(key, rules).endswith(".tam.global_branch.0.weight"):
            return int(tensor.shape[1])
    return None


def convert_file(
    src: str | os.PathLike, dst: str | os.PathLike, arch: str | None = None, frames: int | None = None
) -> dict[str, Any]:
    """Read a checkpoint in any readable layout, check it loads, write it in the vtempo format.

    Returns what was written: arch, num_classes, frames, layout.
    """
    from vtempo import models

    state, meta, layout = read_state(src)
    if layout == "vtempo":
        arch = arch or meta.get("arch")
        frames = frames or meta.get("frames")
    arch = arch or infer_arch(state, layout)
    if arch is None:
        raise UsageError(f"{src}: cannot tell the architecture from the keys; pass --arch (e.g. tsm-r50)")
    head = next((v for k, v in state.items() if _canonical(k, _LAYOUT_RULES[layout]) == "fc.weight"), None)
    if head is None:
        raise VtempoError(f"{src}: no classifier weights found (expected new_fc, cls_head.fc_cls or fc)")
    num_classes = int(head.shape[0])
    stored_frames = infer_frames(state, layout)
    if frames and stored_frames and frames != stored_frames:
        raise UsageError(f"{src}: the TAM weights are for {stored_frames} frames, not --frames {frames}")
    frames = int(frames or stored_frames or 8)
    try:
        model = models.build(arch, num_classes=num_classes, frames=frames)
    except ValueError as error:
        raise UsageError(str(error)) from None
    model.load_state_dict(map_state(model, state, layout, str(src)))  # raises listing anything that does not fit
    save_checkpoint(model, dst, arch=arch, frames=frames, source=Path(src).name, source_layout=layout)
    return {"arch": arch, "num_classes": num_classes, "frames": frames, "layout": layout}
