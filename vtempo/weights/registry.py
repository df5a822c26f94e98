"""The model registry: `checkpoints.yaml`, read here and nowhere else.

The built-in registry ships inside the package (and sits at the repository root). A user registry with
the same schema extends or overrides it: `--registry FILE`, else `$VTEMPO_REGISTRY`, else
`$VTEMPO_HOME/checkpoints.yaml` when present.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vtempo.errors import UsageError

SAMPLINGS = ("uniform", "twice", "dense", "stride")
CROPS = {"centre": 1, "three": 3, "ten": 10}
AVERAGES = ("logits", "prob")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# How a published file is laid out (a hint: vtempo.weights.checkpoint reads the layout off the keys, and reads
# the three official repositories' files with one reader); `vtempo` is vtempo's own format.
LAYOUTS = ("vtempo", "tsm_official", "tam_official", "tcm_official", "mmaction2")
# Entry names become cache file names, so they are kept to safe characters.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z")


class RegistryError(UsageError, ValueError):
    """A registry file that does not follow the schema; the message names the entry and field."""


@dataclass(frozen=True)
class Protocol:
    """How a model is tested: which frames, which views, how view scores are combined."""

    sampling: str = "uniform"
    clips: int = 1
    crop: str = "centre"
    average: str = "logits"
    stride: int | None = None  # frame stride for `stride` sampling; dense uses 64 // frames

    @property
    def views(self) -> str:
        return f"{self.clips}x{CROPS[self.crop]}"


@dataclass(frozen=True)
class Weights:
    """Where a checkpoint comes from and how to check it."""

    layout: str = "vtempo"
    url: str | None = None  # http(s) URL or an absolute local path (relative ones resolved at parse time)
    sha256: str | None = None  # full hex digest, or a published prefix (MMAction2 names carry 8 digits)
    size: int | None = None
    filename: str | None = None  # cache file name; derived from the entry name when absent
    manual_url: str | None = None  # a page the user must download from by hand (Google Drive folders)
    bundled: str | None = None  # file inside vtempo/weights/bundled/


@dataclass(frozen=True)
class ModelEntry:
    name: str
    arch: str
    num_classes: int
    frames: int
    dataset: str | None = None
    labels: str | None = None  # a list in vtempo/weights/labels/ (without .txt) or a path
    input_size: int = 224
    resize: tuple[int, ...] = (256,)  # one number: short side; two: exact (height, width)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    protocol: Protocol = field(default_factory=Protocol)
    weights: Weights | None = None
    top1: float | None = None
    paper_gmacs: float | None = None
    source: str | None = None  # the registry file this entry came from
    notes: str | None = None


def _fail(where: str, message: str) -> RegistryError:
    return RegistryError(f"{where}: {message}")


def _number_list(value: Any, length: int, where: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != length or not all(
        isinstance(v, (int, float)) for v in value
    ):
        raise _fail(where, f"expected a list of {length} numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _typed(mapping: dict, key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    value = mapping.get(key, default)
    if value is not None and not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise _fail(f"{where}.{key}", f"expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _protocol(raw: Any, where: str) -> Protocol:
    if raw is None:
        return Protocol()
    if not isinstance(raw, dict):
        raise _fail(where, "expected a mapping")
    unknown = set(raw) - {"sampling", "clips", "crop", "average", "stride"}
    if unknown:
        raise _fail(where, f"unknown field(s) {sorted(unknown)}")
    protocol = Protocol(
        sampling=_typed(raw, "sampling", str, where, "uniform"),
        clips=_typed(raw, "clips", int, where, 1),
        crop=_typed(raw, "crop", str, where, "centre"),
        average=_typed(raw, "average", str, where, "logits"),
        stride=_typed(raw, "stride", int, where),
    )
    if protocol.sampling not in SAMPLINGS:
        raise _fail(f"{where}.sampling", f"must be one of {SAMPLINGS}, got {protocol.sampling!r}")
    if protocol.crop not in CROPS:
        raise _fail(f"{where}.crop", f"must be one of {tuple(CROPS)}, got {protocol.crop!r}")
    if protocol.average not in AVERAGES:
        raise _fail(f"{where}.average", f"must be one of {AVERAGES}, got {protocol.average!r}")
    if protocol.clips < 1:
        raise _fail(f"{where}.clips", "must be at least 1")
    if protocol.sampling == "stride" and not protocol.stride:
        raise _fail(f"{where}.stride", "stride sampling needs a stride")
    return protocol


def is_remote(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _weights(raw: Any, where: str, folder: Path) -> Weights | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _fail(where, "expected a mapping")
    fields = {"layout", "url", "sha256", "size", "filename", "manual_url", "bundled"}
    unknown = set(raw) - fields
    if unknown:
        raise _fail(where, f"unknown field(s) {sorted(unknown)}")
    weights = Weights(
        layout=_typed(raw, "layout", str, where, "vtempo"),
        url=_typed(raw, "url", str, where),
        sha256=_typed(raw, "sha256", str, where),
        size=_typed(raw, "size", int, where),
        filename=_typed(raw, "filename", str, where),
        manual_url=_typed(raw, "manual_url", str, where),
        bundled=_typed(raw, "bundled", str, where),
    )
    if weights.sha256 is not None:
        digest = weights.sha256.lower()
        if not (8 <= len(digest) <= 64 and all(c in "0123456789abcdef" for c in digest)):
            raise _fail(f"{where}.sha256", f"expected 8 to 64 hex digits, got {weights.sha256!r}")
    if weights.layout not in LAYOUTS:
        raise _fail(f"{where}.layout", f"must be one of {LAYOUTS}, got {weights.layout!r}")
    for key in ("url", "manual_url"):
        value = getattr(weights, key)
        if value is not None and "://" in value and not is_remote(value):
            raise _fail(f"{where}.{key}", f"only http(s) URLs or local paths are allowed, got {value!r}")
    if weights.manual_url is not None and not is_remote(weights.manual_url):
        raise _fail(f"{where}.manual_url", f"expected an http(s) URL, got {weights.manual_url!r}")
    if weights.url is not None and not is_remote(weights.url):  # a local file, relative to this registry
        weights = replace(weights, url=str((folder / Path(weights.url).expanduser()).resolve()))
    for key in ("filename", "bundled"):
        value = getattr(weights, key)
        if value is not None and (not NAME_PATTERN.match(value) or value.endswith((".json", ".part", ".lock"))):
            raise _fail(f"{where}.{key}", f"must be a plain file name, got {value!r}")
    if weights.size is not None and weights.size < 1:
        raise _fail(f"{where}.size", "must be a positive number of bytes")
    if not (weights.url or weights.manual_url or weights.bundled):
        raise _fail(where, "needs url, manual_url or bundled")
    return weights


ENTRY_FIELDS = {
    "arch", "num_classes", "frames", "dataset", "labels", "input_size", "resize", "mean", "std",
    "protocol", "weights", "top1", "paper_gmacs", "notes",
}


def parse_entry(name: str, raw: Any, source: str) -> ModelEntry:
    where = f"{source}: model {name!r}"
    if not NAME_PATTERN.match(name):
        raise _fail(where, "names may hold letters, digits and . _ + - (at most 128), starting with a letter or digit")
    if not isinstance(raw, dict):
        raise _fail(where, "expected a mapping")
    unknown = set(raw) - ENTRY_FIELDS
    if unknown:
        raise _fail(where, f"unknown field(s) {sorted(unknown)}")
    for required in ("arch", "num_classes", "frames"):
        if required not in raw:
            raise _fail(where, f"missing field {required!r}")
    from vtempo.models import split_name

    arch = _typed(raw, "arch", str, where)
    try:
        split_name(arch)
    except ValueError as error:
        raise _fail(f"{where}.arch", str(error)) from None
    resize = raw.get("resize", 256)
    resize = (resize,) if isinstance(resize, int) else resize
    if not isinstance(resize, (list, tuple)) or len(resize) not in (1, 2) or not all(
        isinstance(v, int) and v > 0 for v in resize
    ):
        raise _fail(f"{where}.resize", f"expected a short side or [height, width], got {raw.get('resize')!r}")
    entry = ModelEntry(
        name=name,
        arch=arch,
        num_classes=_typed(raw, "num_classes", int, where),
        frames=_typed(raw, "frames", int, where),
        dataset=_typed(raw, "dataset", str, where),
        labels=_typed(raw, "labels", str, where),
        input_size=_typed(raw, "input_size", int, where, 224),
        resize=tuple(resize),
        mean=_number_list(raw.get("mean", IMAGENET_MEAN), 3, f"{where}.mean"),
        std=_number_list(raw.get("std", IMAGENET_STD), 3, f"{where}.std"),
        protocol=_protocol(raw.get("protocol"), f"{where}.protocol"),
        weights=_weights(raw.get("weights"), f"{where}.weights", Path(source).parent),
        top1=_typed(raw, "top1", (int, float), where),
        paper_gmacs=_typed(raw, "paper_gmacs", (int, float), where),
        source=source,
        notes=_typed(raw, "notes", str, where),
    )
    if entry.num_classes < 1 or entry.frames < 1:
        raise _fail(where, "num_classes and frames must be positive")
    if entry.top1 is not None and not 0 <= entry.top1 <= 100:
        raise _fail(f"{where}.top1", f"expected a percentage, got {entry.top1!r}")
    return entry


def read_registry_file(path: Path) -> dict[str, ModelEntry]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise RegistryError(f"{path}: cannot read registry ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise RegistryError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("models"), dict):
        raise RegistryError(f"{path}: expected a top-level 'models:' mapping")
    return {str(name): parse_entry(str(name), raw, str(path)) for name, raw in document["models"].items()}


def builtin_registry_path() -> Path:
    packaged = resources.files("vtempo") / "checkpoints.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "checkpoints.yaml"  # source checkout


def home() -> Path:
    """vtempo's cache and configuration folder: $VTEMPO_HOME, else the platform cache dir."""
    if os.environ.get("VTEMPO_HOME"):
        return Path(os.environ["VTEMPO_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or (
        Path(os.environ.get("LOCALAPPDATA", "~")) if os.name == "nt" else Path("~/.cache")
    )
    return Path(base).expanduser() / "vtempo"


def user_registry_path(explicit: str | os.PathLike | None = None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get("VTEMPO_REGISTRY"):
        return Path(os.environ["VTEMPO_REGISTRY"])
    candidate = home() / "checkpoints.yaml"
    return candidate if candidate.is_file() else None


@lru_cache(maxsize=8)
def _load(user_path: Path | None) -> dict[str, ModelEntry]:
    entries = read_registry_file(builtin_registry_path())
    if user_path is not None:
        entries.update(read_registry_file(user_path))
    return entries


def load_registry(user_registry: str | os.PathLike | None = None) -> dict[str, ModelEntry]:
    """All registry entries, built-in ones first, user ones overriding them by name."""
    return dict(_load(user_registry_path(user_registry)))


def get_entry(name: str, user_registry: str | os.PathLike | None = None) -> ModelEntry:
    entries = load_registry(user_registry)
    if name not in entries:
        raise KeyError(f"no registry entry named {name!r}; `vtempo models` lists them")
    return entries[name]


def labels_path(entry: ModelEntry) -> Path | None:
    if entry.labels is None:
        return None
    packaged = resources.files("vtempo.weights") / "labels" / f"{entry.labels}.txt"
    return Path(str(packaged)) if packaged.is_file() else Path(entry.labels).expanduser()


def read_labels(path: str | os.PathLike) -> list[str]:
    """One class name per line; blank lines are skipped."""
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]
