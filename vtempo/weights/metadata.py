"""Checkpoint metadata, checked as strictly as a registry entry.

A checkpoint is data from elsewhere: the fields vtempo reads from it (arch, class count, clip length,
class names, preprocessing, test protocol) are validated here, once, by `checked_metadata`, which
`vtempo.weights.checkpoint.read_state` applies to every file it reads. Bounds come from
`vtempo.limits`.
"""
from __future__ import annotations

import unicodedata
from typing import Any

from vtempo import limits
from vtempo.errors import VtempoError
from vtempo.weights.registry import (
    MIN_INPUT_SIZE,
    RegistryError,
    bounded_int,
    check_arch,
    check_protocol,
    check_resize,
    number_list,
    shown,
)

# Fields vtempo reads; any other metadata (epoch, optimizer, a publisher's own keys) passes through unread.
FIELDS = ("arch", "num_classes", "frames", "classes", "input_size", "resize", "mean", "std", "protocol")
# Characters that would steer a terminal or reorder the text around them when a class name is printed.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class MetadataError(VtempoError, ValueError):
    """Checkpoint metadata that vtempo refuses; the message names the file and the field."""


def checked_metadata(meta: dict[str, Any], source: str) -> dict[str, Any]:
    """`meta` with every field vtempo reads validated and normalised (lists for resize/mean/std, a
    protocol mapping with all five fields); other fields are kept as they are.

    A field set to None counts as absent. In a file not in vtempo's format, `arch` names the
    publisher's network (e.g. 'resnet50'), so one that is not a vtempo architecture is dropped rather
    than refused.
    """
    where = f"{source}: metadata"
    checked = {key: value for key, value in meta.items() if not (key in FIELDS and value is None)}
    try:
        if "arch" in checked:
            try:
                check_arch(checked, where)
            except RegistryError:
                if checked.get("format") == "vtempo":
                    raise
                del checked["arch"]
        for key, low, bound in (
            ("num_classes", 1, "MAX_CLASSES"),
            ("frames", 1, "MAX_FRAMES"),
            ("input_size", MIN_INPUT_SIZE, "MAX_INPUT_SIZE"),
        ):
            bounded_int(checked, key, where, low, bound)
        if "resize" in checked:
            checked["resize"] = list(check_resize(checked["resize"], f"{where}.resize"))
        if "mean" in checked:
            checked["mean"] = list(number_list(checked["mean"], 3, f"{where}.mean"))
        if "std" in checked:
            checked["std"] = list(number_list(checked["std"], 3, f"{where}.std", positive=True))
        if "protocol" in checked:
            protocol = check_protocol(checked["protocol"], f"{where}.protocol")
            checked["protocol"] = {
                "sampling": protocol.sampling, "clips": protocol.clips, "crop": protocol.crop,
                "average": protocol.average, "stride": protocol.stride,
            }
    except RegistryError as error:
        raise MetadataError(str(error)) from None
    if "classes" in checked:
        checked["classes"] = _class_names(checked["classes"], checked.get("num_classes"), f"{where}.classes")
    return checked


def _class_names(value: Any, num_classes: int | None, where: str) -> list[str]:
    most, longest = limits.get("MAX_CLASSES"), limits.get("MAX_CLASS_NAME_CHARS")
    if not isinstance(value, (list, tuple)):
        raise MetadataError(f"{where}: expected a list of class names, got {shown(value)}")
    if len(value) > most:
        raise MetadataError(f"{where}: {len(value)} names, more than {most} ({limits.hint('MAX_CLASSES')})")
    if num_classes is not None and len(value) != num_classes:
        raise MetadataError(f"{where}: {len(value)} names for num_classes {num_classes}")
    for index, name in enumerate(value):
        if not isinstance(name, str):
            raise MetadataError(f"{where}[{index}]: expected a string, got {shown(name)}")
        if len(name) > longest:
            raise MetadataError(
                f"{where}[{index}]: {len(name)} characters, more than {longest} ({limits.hint('MAX_CLASS_NAME_CHARS')})"
            )
        if bad := next((c for c in name if _is_control(c)), None):
            raise MetadataError(
                f"{where}[{index}]: holds the control character U+{ord(bad):04X} "
                f"(escape sequences in a name would reach the terminal); {shown(name)}"
            )
    return list(value)


def _is_control(character: str) -> bool:
    return unicodedata.category(character) in ("Cc", "Zl", "Zp") or character in _BIDI_CONTROLS
