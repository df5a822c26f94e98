"""The model registry: `checkpoints.yaml`, read here and nowhere else.

The built-in registry ships inside the package (and sits at the repository root). A user registry with
the same schema extends or overrides it: `--registry FILE`, else `$VTEMPO_REGISTRY`, else
`$VTEMPO_HOME/checkpoints.yaml` when present.
"""
from __future__ import annotations

import math
import os
import re
import reprlib
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vtempo import limits
from vtempo.errors import UsageError
from vtempo.paths import home
from vtempo.protocol import AVERAGES, CROPS, IMAGENET_MEAN, IMAGENET_STD, SAMPLINGS, Protocol

# How a published file is laid out (a hint: vtempo.weights.checkpoint reads the layout off the keys, and reads
# the three official repositories' files with one reader); `vtempo` is vtempo's own format.
LAYOUTS = ("vtempo", "tsm_official", "tam_official", "tcm_official", "mmaction2")
# Entry names become cache file names, so they are kept to safe characters.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z")


class RegistryError(UsageError, ValueError):
    """A registry file that does not follow the schema; the message names the entry and field."""


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


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxlist, _SHORT_REPR.maxtuple, _SHORT_REPR.maxdict = 2, 4, 4, 4
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = _SHORT_REPR.maxlong = 60
SHOWN_CHARS = 100  # a value quoted in an error message is cut to this many characters


def shown(value: Any) -> str:
    """repr(value) for a message, bounded whatever the value (a nested or aliased YAML value can be huge)."""
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def number_list(value: Any, length: int, where: str, positive: bool = False) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != length or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
        for v in value
    ):
        kind = "positive numbers" if positive else "numbers"
        raise _fail(where, f"expected a list of {length} {kind}, got {shown(value)}")
    return tuple(float(v) for v in value)


def _typed(mapping: dict, key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    value = mapping.get(key, default)
    if value is not None and not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise _fail(f"{where}.{key}", f"expected {getattr(kind, '__name__', kind)}, got {shown(value)}")
    return value


def bounded_int(mapping: dict, key: str, where: str, low: int, high: str, default: Any = None) -> Any:
    """An int field between `low` and the bound named `high` (in vtempo.limits)."""
    value = _typed(mapping, key, int, where, default)
    if value is not None and not low <= value <= limits.get(high):
        raise _fail(f"{where}.{key}", f"must be between {low} and {limits.shown(limits.get(high))}, got {value} ({limits.hint(high)})")
    return value


def check_resize(value: Any, where: str) -> tuple[int, ...]:
    """`resize`: one short side or [height, width], each 1..MAX_RESIZE."""
    resize = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(resize, (list, tuple)) or len(resize) not in (1, 2) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v <= limits.get("MAX_RESIZE") for v in resize
    ):
        raise _fail(
            where,
            f"expected a short side or [height, width] of 1 to {limits.get('MAX_RESIZE')} pixels, got {shown(value)}",
        )
    return tuple(resize)


def check_protocol(raw: Any, where: str) -> Protocol:
    """A test protocol mapping (registry entry or checkpoint metadata), every field checked and bounded."""
    if raw is None:
        return Protocol()
    if not isinstance(raw, dict):
        raise _fail(where, f"expected a mapping, got {shown(raw)}")
    unknown = set(raw) - {"sampling", "clips", "crop", "average", "stride"}
    if unknown:
        raise _fail(where, f"unknown field(s) {shown(sorted(map(str, unknown)))}")
    protocol = Protocol(
        sampling=_typed(raw, "sampling", str, where, "uniform"),
        clips=bounded_int(raw, "clips", where, 1, "MAX_CLIPS", 1),
        crop=_typed(raw, "crop", str, where, "centre"),
        average=_typed(raw, "average", str, where, "logits"),
        stride=bounded_int(raw, "stride", where, 1, "MAX_STRIDE"),
    )
    if protocol.sampling not in SAMPLINGS:
        raise _fail(f"{where}.sampling", f"must be one of {SAMPLINGS}, got {shown(protocol.sampling)}")
    if protocol.crop not in CROPS:
        raise _fail(f"{where}.crop", f"must be one of {tuple(CROPS)}, got {shown(protocol.crop)}")
    if protocol.average not in AVERAGES:
        raise _fail(f"{where}.average", f"must be one of {AVERAGES}, got {shown(protocol.average)}")
    if protocol.sampling == "stride" and not protocol.stride:
        raise _fail(f"{where}.stride", "stride sampling needs a stride")
    return protocol


def is_remote(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _weights(raw: Any, where: str, folder: Path) -> Weights | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _fail(where, f"expected a mapping, got {shown(raw)}")
    if isinstance(raw.get("sha256"), (int, float)) and not isinstance(raw.get("sha256"), bool):
        raise _fail(
            f"{where}.sha256",
            "YAML read this all-digit hash as a number; put it in quotes (sha256: '0123…') so it stays text",
        )
    fields = {"layout", "url", "sha256", "size", "filename", "manual_url", "bundled"}
    unknown = set(raw) - fields
    if unknown:
        raise _fail(where, f"unknown field(s) {shown(sorted(map(str, unknown)))}")
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
            raise _fail(f"{where}.sha256", f"expected 8 to 64 hex digits, got {shown(weights.sha256)}")
    if weights.layout not in LAYOUTS:
        raise _fail(f"{where}.layout", f"must be one of {LAYOUTS}, got {shown(weights.layout)}")
    for key in ("url", "manual_url"):
        value = getattr(weights, key)
        if value is not None and "://" in value and not is_remote(value):
            raise _fail(f"{where}.{key}", f"only http(s) URLs or local paths are allowed, got {shown(value)}")
    if weights.manual_url is not None and not is_remote(weights.manual_url):
        raise _fail(f"{where}.manual_url", f"expected an http(s) URL, got {shown(weights.manual_url)}")
    if weights.url is not None and not is_remote(weights.url):  # a local file, relative to this registry
        weights = replace(weights, url=str((folder / Path(weights.url).expanduser()).resolve()))
    for key in ("filename", "bundled"):
        value = getattr(weights, key)
        if value is not None and (not NAME_PATTERN.match(value) or value.endswith((".json", ".part", ".lock"))):
            raise _fail(f"{where}.{key}", f"must be a plain file name, got {shown(value)}")
    if weights.size is not None and weights.size < 1:
        raise _fail(f"{where}.size", "must be a positive number of bytes")
    if not (weights.url or weights.manual_url or weights.bundled):
        raise _fail(where, "needs url, manual_url or bundled")
    return weights


ENTRY_FIELDS = {
    "arch", "num_classes", "frames", "dataset", "labels", "input_size", "resize", "mean", "std",
    "protocol", "weights", "top1", "paper_gmacs", "notes",
}


MIN_INPUT_SIZE = 8  # smaller crops vanish in a ResNet's five stride-2 stages


def check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise _fail(
            f"{where}: model {shown(name)}",
            "names may hold letters, digits and . _ + - (at most 128), starting with a letter or digit",
        )
    return name


def check_arch(raw: dict, where: str) -> str:
    # here, not at the top: it imports torch, and every command imports this module (through the hub)
    from vtempo.models import split_name

    arch = _typed(raw, "arch", str, where)
    try:
        split_name(arch)
    except ValueError as error:
        raise _fail(f"{where}.arch", str(error)[:200]) from None
    return arch


def parse_entry(name: str, raw: Any, source: str) -> ModelEntry:
    check_name(name, source)
    where = f"{source}: model {name!r}"
    if not isinstance(raw, dict):
        raise _fail(where, f"expected a mapping, got {shown(raw)}")
    unknown = set(raw) - ENTRY_FIELDS
    if unknown:
        raise _fail(where, f"unknown field(s) {shown(sorted(map(str, unknown)))}")
    for required in ("arch", "num_classes", "frames"):
        if required not in raw:
            raise _fail(where, f"missing field {required!r}")
    entry = ModelEntry(
        name=name,
        arch=check_arch(raw, where),
        num_classes=bounded_int(raw, "num_classes", where, 1, "MAX_CLASSES"),
        frames=bounded_int(raw, "frames", where, 1, "MAX_FRAMES"),
        dataset=_typed(raw, "dataset", str, where),
        labels=_typed(raw, "labels", str, where),
        input_size=bounded_int(raw, "input_size", where, MIN_INPUT_SIZE, "MAX_INPUT_SIZE", 224),
        resize=check_resize(raw.get("resize", 256), f"{where}.resize"),
        mean=number_list(raw.get("mean", IMAGENET_MEAN), 3, f"{where}.mean"),
        std=number_list(raw.get("std", IMAGENET_STD), 3, f"{where}.std", positive=True),
        protocol=check_protocol(raw.get("protocol"), f"{where}.protocol"),
        weights=_weights(raw.get("weights"), f"{where}.weights", Path(source).parent),
        top1=_typed(raw, "top1", (int, float), where),
        paper_gmacs=_typed(raw, "paper_gmacs", (int, float), where),
        source=source,
        notes=_typed(raw, "notes", str, where),
    )
    if entry.top1 is not None and not 0 <= entry.top1 <= 100:
        raise _fail(f"{where}.top1", f"expected a percentage, got {shown(entry.top1)}")
    return entry


# libyaml's safe loader where PyYAML was built with it: the same safe constructors, parsed in C
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_registry_file(path: Path) -> dict[str, ModelEntry]:
    """Every entry of one registry file; any problem is a RegistryError naming the file.

    The file is read with a bounded size, nesting depth and alias expansion (see vtempo.limits)
    before YAML builds anything from it.
    """
    text = _registry_text(path)
    try:
        _check_shape(text, path)
        document = yaml.load(text, Loader=SAFE_LOADER)
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())[:300]
        raise RegistryError(f"{path}: not valid YAML ({reason})") from None
    except RecursionError:  # a safety net: _check_shape bounds the depth first
        raise RegistryError(f"{path}: nested too deeply to be a registry") from None
    if not isinstance(document, dict) or not isinstance(document.get("models"), dict):
        raise RegistryError(f"{path}: expected a top-level 'models:' mapping")
    entries = {}
    for name, raw in document["models"].items():
        if isinstance(name, (int, float)) and not isinstance(name, bool):
            name = str(name)  # `2024:` is a number to YAML, a name here
        entries[check_name(name, str(path))] = parse_entry(name, raw, str(path))
    return entries


def _registry_text(path: Path) -> str:
    most = limits.get("REGISTRY_MAX_BYTES")
    try:
        with open(path, "rb") as handle:
            data = handle.read(most + 1)
    except OSError as error:
        raise RegistryError(f"{path}: cannot read registry ({error.strerror or error})") from None
    if len(data) > most:
        raise RegistryError(
            f"{path}: larger than {most} bytes, too large for a registry ({limits.hint('REGISTRY_MAX_BYTES')})"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RegistryError(
            f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); save it as UTF-8"
        ) from None


def _check_shape(text: str, path: Path) -> None:
    """Refuse deep nesting and aliases that expand the document, reading YAML events (no recursion)."""
    max_depth, max_alias = limits.get("REGISTRY_MAX_DEPTH"), limits.get("REGISTRY_MAX_ALIAS_NODES")
    anchored: dict[str, int] = {}  # anchor → how many values its node holds, aliases expanded
    open_nodes: list[list] = []  # [anchor, values so far] for each mapping or sequence being read
    aliased = 0

    def add(count: int) -> None:
        if open_nodes:
            open_nodes[-1][1] += count

    try:
        for event in yaml.parse(text, Loader=SAFE_LOADER):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                open_nodes.append([event.anchor, 1])
                if len(open_nodes) > max_depth:
                    raise RegistryError(
                        f"{path}: nested more than {max_depth} levels deep ({limits.hint('REGISTRY_MAX_DEPTH')})"
                    )
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                anchor, count = open_nodes.pop()
                if anchor is not None:
                    anchored[anchor] = count
                add(count)
            elif isinstance(event, yaml.ScalarEvent):
                if event.anchor is not None:
                    anchored[event.anchor] = 1
                add(1)
            elif isinstance(event, yaml.AliasEvent):
                if event.anchor not in anchored:
                    raise RegistryError(f"{path}: alias *{event.anchor[:40]} refers to itself or to no anchor")
                aliased += anchored[event.anchor]
                if aliased > max_alias:
                    raise RegistryError(
                        f"{path}: its aliases (*name) expand to more than {max_alias} values; "
                        f"write the values out ({limits.hint('REGISTRY_MAX_ALIAS_NODES')})"
                    )
                add(anchored[event.anchor])
    except yaml.YAMLError as error:
        if "maximum nesting depth" not in str(error):
            raise
        # libyaml's own bound (deeper than any registry needs) was met before ours
        raise RegistryError(
            f"{path}: nested more than {max_depth} levels deep ({limits.hint('REGISTRY_MAX_DEPTH')})"
        ) from None


def builtin_registry_path() -> Path:
    packaged = resources.files("vtempo") / "checkpoints.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "checkpoints.yaml"  # source checkout


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
    """One class name per line; blank lines are skipped. The file is read up to the size of the longest
    list the limits allow (MAX_CLASSES names of MAX_CLASS_NAME_CHARS), so /dev/zero cannot fill memory."""
    most = limits.get("MAX_CLASSES") * (limits.get("MAX_CLASS_NAME_CHARS") + 2)
    with open(path, encoding="utf-8") as handle:
        text = handle.read(most + 1)
    if len(text) > most:
        raise UsageError(
            f"{path}: longer than a list of {limits.get('MAX_CLASSES')} class names can be "
            f"({limits.hint('MAX_CLASSES')})"
        )
    return [line.strip() for line in text.splitlines() if line.strip()]
