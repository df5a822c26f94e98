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

import collections
import contextlib
import errno
import functools
import os
import pickle
import re
import stat
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn

from vtempo import limits, models
from vtempo.errors import UsageError, VtempoError, param
from vtempo.models.backbone import DEPTHS
from vtempo.models.base import TemporalModule, module_classes
from vtempo.models.tsm import TemporalShift
from vtempo.weights.metadata import checked_metadata

FORMAT = "vtempo"
IGNORED_KEYS = frozenset({"data_preprocessor.mean", "data_preprocessor.std"})
SHOWN_KEYS = 12  # keys named in an error message before "… and N more"

_Rules = list[tuple[re.Pattern[str], str]]


def _rules(*pairs: tuple[str, str]) -> _Rules:
    return [(re.compile(pattern), replacement) for pattern, replacement in pairs]


# What each layout names differently from torchvision's ResNet, around the temporal modules' own rules
# (`TemporalModule.checkpoint_rules`, in each paper's file): (rules before theirs, rules after theirs).
_BACKBONE_RULES: dict[str, tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]] = {
    "vtempo": ((), ()),
    "official": (((r"^base_model\.", "backbone."), (r"^new_fc\.", "fc.")), ()),
    "mmaction2": (
        (
            (r"^cls_head\.fc_cls\.", "fc."),
            (r"^backbone\.conv1\.conv\.", "backbone.conv1."),
            (r"^backbone\.conv1\.bn\.", "backbone.bn1."),
        ),
        (
            (r"\.conv(\d)\.conv\.", r".conv\1."),
            (r"\.conv(\d)\.bn\.", r".bn\1."),
            (r"\.downsample\.conv\.", ".downsample.0."),
            (r"\.downsample\.bn\.", ".downsample.1."),
        ),
    ),
}
_BLOCK = re.compile(r"(layer\d\.\d+)\.")


@functools.cache
def _layout_rules() -> dict[str, _Rules]:
    """Every layout's rules: the backbone's, with those of every temporal module class in between."""
    own = [vars(cls)["checkpoint_rules"] for cls in module_classes() if "checkpoint_rules" in vars(cls)]
    return {
        layout: _rules(*before, *(pair for rules in own for pair in rules.get(layout, ())), *after)
        for layout, (before, after) in _BACKBONE_RULES.items()
    }


def _canonical(key: str, rules: _Rules) -> str:
    for pattern, replacement in rules:
        key = pattern.sub(replacement, key)
    return key


def canonical_key(key: str, layout: str) -> str:
    """`key` of a state dict in `layout` under its canonical name (`fc.weight` for every layout's head)."""
    return _canonical(key, _layout_rules()[layout])


# ---------------------------------------------------------------------------------------------- reading


class LoadedFile(dict):
    """What `read_file` read from a checkpoint file, remembering the file so errors about it name it.

    It pickles (torch.save, copy) as the OrderedDict a state dict is, so a file saved from it still
    loads weights-only.
    """

    path: Path

    def __reduce__(self):
        return collections.OrderedDict, (), None, None, iter(self.items())


def _name(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(source, "path", "state dict"))


def _absent(path: Path) -> str:
    """Why `path` is not a checkpoint file one can open: missing, a loop, a dangling link, a folder."""
    try:
        info = path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symbolic link loop, not a checkpoint file"
        if path.is_symlink():
            return f"a broken symbolic link (points to {os.readlink(path)})"
        if error.errno == errno.ENOENT:
            return "no such checkpoint file"
        return f"cannot open the checkpoint ({error.strerror or error})"
    return "a folder, not a checkpoint file" if stat.S_ISDIR(info.st_mode) else "not a regular file"


def read_file(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True; any failure is one line naming the file.

    A mapping comes back as a LoadedFile (a dict that knows its path).
    """
    path = Path(path)
    if not path.is_file():
        raise VtempoError(f"{path}: {_absent(path)}")
    _check_archive(path)
    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            if "GLOBAL numpy." not in str(error):
                raise
            # MMAction2/mmengine metadata can hold numpy scalars and arrays: plain data, allowed here.
            with torch.serialization.safe_globals(_numpy_globals()):
                loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        raise VtempoError(f"{path}: {_load_failure(error, path)}") from None
    if isinstance(loaded, Mapping):
        loaded = LoadedFile(loaded)
        loaded.path = path
    return loaded


def _check_archive(path: Path) -> None:
    """A zip checkpoint (torch's format) whose records, uncompressed, would exceed CHECKPOINT_MAX_BYTES
    or that holds more than CHECKPOINT_MAX_ENTRIES records is refused from its directory, before
    torch inflates anything (a few compressed megabytes can hold gigabytes of zeros)."""
    try:
        if not zipfile.is_zipfile(path):
            return  # the legacy formats: torch.load says what is wrong with them
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # torch.load gives the reason
    most_entries, most_bytes = limits.get("CHECKPOINT_MAX_ENTRIES"), limits.get("CHECKPOINT_MAX_BYTES")
    if len(entries) > most_entries:
        raise VtempoError(f"{path}: {len(entries)} records in its archive, more than {most_entries} "
                          f"({limits.hint('CHECKPOINT_MAX_ENTRIES')})")
    total = sum(entry.file_size for entry in entries)
    if total > most_bytes:
        raise VtempoError(f"{path}: {total} bytes uncompressed (the file has {path.stat().st_size}), more than "
                          f"{most_bytes} ({limits.hint('CHECKPOINT_MAX_BYTES')})")


# torch's weights-only refusal opens with advice to load the file with weights_only=False: never shown.
_TORCH_BOILERPLATE = (
    "Weights only load failed", "Please file an issue", "Check the documentation", "In PyTorch 2.6", "Re-running",
    "weights_only` set to `False", "trusted source", "weights_only=False",
)


def _load_failure(error: Exception, path: Path | None = None) -> str:
    text = str(error)
    if match := re.search(r"GLOBAL ([\w.]+)", text):
        return (
            f"the file asks to run code when loaded (it calls {match.group(1)}), not just to hold weights; "
            f"vtempo will not load it"
        )
    if path is not None and (kind := text_kind(path)):
        return f"{kind}, not a PyTorch checkpoint"
    if match := re.search(r"WeightsUnpickler error:\s*(.+)", text):
        return f"not a PyTorch checkpoint ({match.group(1).strip()[:200]})"
    if "legacy .tar format" in text:
        return "not a PyTorch checkpoint (nor one in the legacy .tar format that a weights-only load can read)"
    if "zip archive" in text:
        return "corrupt or truncated checkpoint (its zip archive cannot be read)"
    if isinstance(error, EOFError):
        return "empty or truncated checkpoint"
    sentences = [
        sentence.strip() for sentence in re.split(r"(?<=\.)\s+|\n+", text)
        if sentence.strip() and not any(phrase in sentence for phrase in _TORCH_BOILERPLATE)
    ]
    return f"not a readable PyTorch checkpoint ({sentences[0][:200] if sentences else type(error).__name__})"


def text_kind(path: Path) -> str | None:
    """'an HTML page' (a login or error page saved in the checkpoint's place) or 'a text file', else None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError:
        return None
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml", b"<!--")):
        return "an HTML page"
    if head and all(32 <= byte < 127 or byte in (9, 10, 13) for byte in head):
        return "a text file"
    return None


def _numpy_globals() -> list:
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
    for key, tensor in obj.items():
        if tensor.layout != torch.strided:
            raise VtempoError(f"{name}: {key} is a {str(tensor.layout).removeprefix('torch.')} tensor; "
                              f"a model's weights are dense")
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
    """(state dict, container metadata, layout) from a path or a loaded object.

    The metadata is validated by `vtempo.weights.metadata.checked_metadata`: every field vtempo reads
    from it is present with a sane value or absent.
    """
    name = _name(source)
    obj = read_file(source) if isinstance(source, (str, os.PathLike)) else source
    state, meta = unwrap(obj, name)
    meta = checked_metadata(meta, name)
    layout = detect_layout(state, meta)
    if layout is None:
        sample = ", ".join(list(state)[:3])
        hint = f" (expected {expected_layout})" if expected_layout else ""
        raise VtempoError(
            f"{name}: unknown checkpoint layout{hint}: keys like {sample}; "
            f"readable layouts: official TSN/TSM/TAM/TCM, MMAction2, vtempo"
        )
    return state, meta, layout


# The fields `vtempo train` writes to last.pt, and their types: a file lacking one cannot be resumed.
TRAINING_STATE = {
    "model": Mapping, "optimizer": Mapping, "scheduler": Mapping, "scaler": Mapping, "epoch": int,
    "best_top1": (int, float), "best_epoch": int, "arch": str, "classes": list, "torch_rng": torch.Tensor,
}


def read_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """The training state `vtempo train` saved (last.pt), read weights-only; one-line errors naming the file."""
    state = read_file(path)
    if not isinstance(state, Mapping):
        raise VtempoError(f"{path}: not a vtempo training state (expected the mapping `vtempo train` writes)")
    for key, kind in TRAINING_STATE.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise VtempoError(f"{path}: not a vtempo training state ({key!r} is missing or not a {getattr(kind, '__name__', 'number')})")
    if state["torch_rng"].dtype != torch.uint8 or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise VtempoError(f"{path}: not a vtempo training state (its model weights or random state are not tensors)")
    return dict(state)


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
    by_canonical = {_canonical(k, _layout_rules()["vtempo"]): k for k in model_keys}
    rules = _layout_rules()[layout]
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
        if expected.is_floating_point() and not tensor.is_floating_point():
            kind = str(tensor.dtype).removeprefix("torch.")
            raise VtempoError(f"{name}: {key} holds {kind} values where the model has {str(expected.dtype).removeprefix('torch.')} "
                              f"weights; a checkpoint of real numbers is needed, not a cast")
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
        raise UsageError(f"save_checkpoint: pass {param('arch')} (it cannot be read off this model's weights)")
    fixed = _fixed_frames(model)
    if frames is not None and fixed is not None and frames != fixed:
        raise UsageError(f"save_checkpoint: {param('frames', frames)} but the model is built for {fixed} frames")
    path = _writable(path)
    checkpoint = {
        "format": FORMAT,
        "arch": arch,
        "num_classes": int(model.fc.out_features),
        "frames": int(frames or fixed or 8),
        "state_dict": state,
        **meta,
    }
    created = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    existing = (path.parent, *path.parent.parents)[len(created)]
    if not existing.is_dir():
        raise VtempoError(f"{path}: cannot write the checkpoint ({existing} is a file, not a folder)")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:  # opened here, so an unwritable place is an OSError with a reason
            torch.save(checkpoint, handle)
        temporary.replace(path)
    except (OSError, RuntimeError) as error:  # torch.save reports a failed write as a RuntimeError
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
            for folder in created:  # innermost first; only the folders made here, and only if empty
                folder.rmdir()
        reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[0][:200]
        raise VtempoError(f"{path}: cannot write the checkpoint ({reason})") from None
    return path


def _writable(path: str | os.PathLike) -> Path:
    """`path` as a Path, refused at once when it names a folder (a checkpoint is one file)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: a folder; give the checkpoint a file name (e.g. {path / 'model.pt'})")
    return path


# ---------------------------------------------------------------------------------------------- converting


def infer_arch(state: Mapping[str, torch.Tensor], layout: str) -> str | None:
    """`<family>-<backbone>` read off the keys (TSN/TSM/TAM/TCM on any vtempo ResNet), else None."""
    rules = _layout_rules()[layout]
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
    rules = _layout_rules()[layout]
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
    _writable(dst)  # before the work of reading and checking the source
    state, meta, layout = read_state(src)
    if layout == "vtempo":
        arch = arch or meta.get("arch")
        frames = frames or meta.get("frames")
    arch = arch or infer_arch(state, layout)
    if arch is None:
        raise UsageError(f"{src}: cannot tell the architecture from the keys; pass {param('arch')} (e.g. tsm-r50)")
    head = next((v for k, v in state.items() if _canonical(k, _layout_rules()[layout]) == "fc.weight"), None)
    if head is None:
        raise VtempoError(f"{src}: no classifier weights found (expected new_fc, cls_head.fc_cls or fc)")
    num_classes = int(head.shape[0])
    stored_frames = infer_frames(state, layout)
    if frames and stored_frames and frames != stored_frames:
        raise UsageError(f"{src}: the TAM weights are for {stored_frames} frames, not {param('frames', frames)}")
    frames = int(frames or stored_frames or 8)
    try:
        model = models.build(arch, num_classes=num_classes, frames=frames)
    except ValueError as error:
        raise UsageError(str(error)) from None
    model.load_state_dict(map_state(model, state, layout, str(src)))  # raises listing anything that does not fit
    save_checkpoint(model, dst, arch=arch, frames=frames, source=Path(src).name, source_layout=layout)
    return {"arch": arch, "num_classes": num_classes, "frames": frames, "layout": layout}
