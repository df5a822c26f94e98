"""The registry: the built-in checkpoints.yaml describes every public checkpoint faithfully, a bad
registry fails naming the file, the entry and the field, and a user registry extends the built-in one."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import vtempo
from vtempo.cli import app
from vtempo.weights import registry
from vtempo.errors import UsageError
from vtempo.weights.registry import RegistryError

runner = CliRunner()

# Reported top-1 per entry, as published (the papers, the official READMEs and the MMAction2 model zoo).
PUBLISHED_TOP1 = {
    "tsn-r50-k400": 70.6, "tsm-r50-k400": 71.2, "tsm-r50-k400-16f": 72.6, "tsm-r50-k400-dense": 74.1,
    "tsm-r50-sthv1": 45.6, "tsm-r50-sthv1-16f": 47.2, "tsm-r101-sthv1": 46.9, "tsm-r50-sthv2": 61.2,
    "tsm-r50-sthv2-16f": 63.1, "tsm-r101-sthv2": 63.3,
    "tam-r50-k400-dense": 76.1, "tam-r50-k400-16f-dense": 76.9, "tam-r50-sthv1": 46.5, "tam-r50-sthv1-16f": 47.6,
    "tam-r50-sthv2": 62.7, "tam-r50-sthv2-16f": 64.6,
    "tcm-r50-sthv1": 52.2,
    "tsn-r50-k400-mmaction2": 74.12, "tsn-r101-k400-mmaction2": 75.89, "tsn-r50-sthv2-mmaction2": 35.51,
    "tsm-r50-k400-mmaction2": 73.18, "tsm-r50-k400-16f-mmaction2": 75.12, "tsm-r50-k400-dense-mmaction2": 73.38,
    "tsm-r50-sthv2-mmaction2": 62.72, "tsm-r50-sthv2-16f-mmaction2": 64.16, "tsm-r101-sthv2-mmaction2": 63.70,
    "tam-r50-k400-dense-mmaction2": 76.25, "tam-r50-sthv1-mmaction2": 46.98, "tam-r50-sthv1-16f-mmaction2": 48.24,
    "stc-r50-sthv1": 48.3, "stc-light-r50-sthv1": 48.2, "tefe-r50-sthv1": 46.7, "tsi-r50-sthv1": 50.2,
}
NAME = re.compile(
    r"(?P<arch>(?:tsn|tsm|tam|tcm|stc|stc-light|tefe|tsi)-r(?:18|50|101))-(?P<data>k400|sthv1|sthv2)"
    r"(?:-(?P<frames>\d+)f)?(?P<dense>-dense)?(?P<source>-mmaction2)?"
)
DATASETS = {"k400": ("kinetics400", 400), "sthv1": ("sthv1", 174), "sthv2": ("sthv2", 174)}


@pytest.fixture(autouse=True)
def clean_home(monkeypatch, tmp_path):
    monkeypatch.setenv("VTEMPO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VTEMPO_REGISTRY", raising=False)
    registry._load.cache_clear()
    yield
    registry._load.cache_clear()


def write(path: Path, models: dict | str) -> Path:
    path.write_text(models if isinstance(models, str) else yaml.safe_dump({"models": models}), encoding="utf-8")
    registry._load.cache_clear()
    return path


def test_builtin_registry_holds_every_public_checkpoint():
    entries = {name: entry for name, entry in registry.load_registry().items() if not name.endswith("-demo")}
    assert set(entries) == set(PUBLISHED_TOP1)
    for name, entry in entries.items():
        parts = NAME.fullmatch(name)
        assert parts, f"{name} does not follow the naming scheme"
        assert entry.arch == parts["arch"]
        assert (entry.dataset, entry.num_classes) == DATASETS[parts["data"]], name
        assert entry.top1 == PUBLISHED_TOP1[name], name
        if parts["frames"]:
            assert entry.frames == int(parts["frames"]), name
        if parts["dense"]:
            assert entry.protocol.sampling == "dense" and entry.protocol.clips == 10, name
        assert entry.protocol.average == ("prob" if parts["source"] else "logits"), name
        # One normalisation for all: MMAction2's 0-255 constants are the ImageNet ones times 255.
        assert entry.std == registry.IMAGENET_STD
        assert all(abs(m - i) < 2e-4 for m, i in zip(entry.mean, registry.IMAGENET_MEAN)), name  # TANet: 103.5
        weights = entry.weights
        if entry.arch.split("-r")[0] in ("stc", "stc-light", "tefe", "tsi"):
            assert weights is None and "No public code or weights" in entry.notes, name
            continue
        assert weights is not None and entry.labels is not None, name
        labels = registry.read_labels(registry.labels_path(entry))
        assert len(labels) == entry.num_classes, name
        if parts["source"]:
            # MMAction2 file names end in the first 8 hex digits of the file's sha256.
            assert weights.layout == "mmaction2" and weights.url.startswith("https://download.openmmlab.com/mmaction/v1.0/")
            assert weights.url.endswith(f"-{weights.sha256}.pth"), name
        elif entry.arch.startswith("tam"):
            assert weights.layout == "tam_official" and weights.url is None
            assert weights.manual_url.startswith("https://drive.google.com/drive/folders/")
        elif entry.arch.startswith("tcm"):
            assert weights.layout == "tcm_official"
            assert weights.url == "https://github.com/zphyix/TCM/releases/download/v1/sthv1_8f_best.pth"
        else:
            assert weights.layout == "tsm_official" and weights.url.startswith("https://hanlab18.mit.edu/projects/tsm/models/TSM_")
            assert f"_segment{entry.frames}_" in weights.url or name == "tsn-r50-k400"  # trained on 5 segments
    # Class orders of Something-Something v1: MMAction2 keeps the 20BN order, the official tools sort.
    assert entries["tam-r50-sthv1-mmaction2"].labels == "sthv1_20bn_order"
    assert {entries[n].labels for n in ("tsm-r50-sthv1", "tam-r50-sthv1", "tcm-r50-sthv1")} == {"sthv2"}
    assert entries["tcm-r50-sthv1"].resize == (240, 320)
    assert entries["tam-r50-k400-dense-mmaction2"].mean[2] == pytest.approx(103.5 / 255)
    assert entries["tsm-r50-k400-mmaction2"].mean[2] == pytest.approx(103.53 / 255, abs=1e-6)
    assert len({e.weights.url for e in entries.values() if e.weights and e.weights.url}) == 23


BASE = {"arch": "tsm-r50", "num_classes": 10, "frames": 8}


@pytest.mark.parametrize(
    "name, spec, field, reason",
    [
        ("bad", {**BASE, "frames": "eight"}, "'bad'", "expected int, got 'eight'"),
        ("bad", {**BASE, "colour": "red"}, "'bad'", "unknown field(s) ['colour']"),
        ("bad", {"arch": "tsm-r50", "frames": 8}, "'bad'", "missing field 'num_classes'"),
        ("bad", {**BASE, "arch": "i3d-r50"}, "'bad'.arch", "unknown architecture 'i3d-r50'"),
        ("bad", {**BASE, "mean": [0.5, 0.5]}, "'bad'.mean", "expected a list of 3 numbers"),
        ("bad", {**BASE, "resize": "big"}, "'bad'.resize", "expected a short side or [height, width]"),
        ("bad", {**BASE, "top1": 170}, "'bad'.top1", "expected a percentage"),
        ("bad", {**BASE, "protocol": {"sampling": "random"}}, "'bad'.protocol.sampling", "must be one of"),
        ("bad", {**BASE, "weights": {"url": "ftp://host/x.pth"}}, "'bad'.weights.url", "only http(s) URLs or local paths"),
        ("bad", {**BASE, "weights": {"url": "https://h/x", "sha256": "xyz"}}, "'bad'.weights.sha256", "expected 8 to 64 hex digits"),
        ("bad", {**BASE, "weights": {"url": "https://h/x", "layout": "caffe"}}, "'bad'.weights.layout", "must be one of"),
        ("bad", {**BASE, "weights": {"url": "https://h/x", "filename": "../x.pth"}}, "'bad'.weights.filename", "plain file name"),
        ("bad", {**BASE, "weights": {"url": "https://h/x", "size": 0}}, "'bad'.weights.size", "positive number of bytes"),
        ("bad", {**BASE, "weights": {"layout": "vtempo"}}, "'bad'.weights", "needs url, manual_url or bundled"),
        ("../evil", BASE, "'../evil'", "names may hold letters, digits"),
    ],
)
def test_validation_errors_name_file_entry_and_field(tmp_path, name, spec, field, reason):
    path = write(tmp_path / "user.yaml", {name: spec})
    with pytest.raises(RegistryError) as error:
        registry.load_registry(path)
    message = str(error.value)
    assert message.startswith(f"{path}: model {field}"), message
    assert reason in message and "\n" not in message

    result = runner.invoke(app, ["models", "--registry", str(path)])
    assert result.exit_code == 2 and reason in result.output and "Traceback" not in result.output


def test_unreadable_registry_files(tmp_path):
    with pytest.raises(RegistryError, match="not valid YAML"):
        registry.load_registry(write(tmp_path / "a.yaml", "models: [unclosed"))
    with pytest.raises(RegistryError, match="expected a top-level 'models:' mapping"):
        registry.load_registry(write(tmp_path / "b.yaml", "- just a list"))
    with pytest.raises(RegistryError, match="cannot read registry"):
        registry.load_registry(tmp_path / "missing.yaml")
    result = runner.invoke(app, ["models", "--registry", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "missing.yaml: cannot read registry" in result.output


def test_user_registry_extends_and_overrides_the_builtin_one(tmp_path, monkeypatch):
    builtin = registry.load_registry()
    mine = {
        "my-tsm": {**BASE, "dataset": "mine", "top1": 90.0, "weights": {"url": "weights/my-tsm.pth"}},
        "tsm-r50-k400": {**BASE, "num_classes": 400, "top1": 12.5,
                         "weights": {"url": "https://mirror.example.org/tsm.pth", "layout": "tsm_official"}},
    }
    path = write(tmp_path / "user.yaml", mine)

    explicit = registry.load_registry(path)
    assert set(explicit) == set(builtin) | {"my-tsm"}
    assert explicit["tsm-r50-k400"].top1 == 12.5 and explicit["tsm-r50-k400"].source == str(path)
    assert explicit["tsm-r50-sthv1"] == builtin["tsm-r50-sthv1"]
    assert explicit["my-tsm"].weights.url == str(tmp_path / "weights" / "my-tsm.pth")
    assert "my-tsm" in vtempo.list_models(path) and "tsm-r50" in vtempo.list_models(path)

    monkeypatch.setenv("VTEMPO_REGISTRY", str(path))  # the variable, when no --registry is given
    assert registry.get_entry("my-tsm").top1 == 90.0
    monkeypatch.delenv("VTEMPO_REGISTRY")
    registry._load.cache_clear()
    with pytest.raises(KeyError, match="no registry entry named 'my-tsm'"):
        registry.get_entry("my-tsm")
    home = registry.home()  # else $VTEMPO_HOME/checkpoints.yaml
    home.mkdir(parents=True)
    write(home / "checkpoints.yaml", mine)
    assert registry.get_entry("my-tsm").dataset == "mine"

    listing = json.loads(runner.invoke(app, ["models", "--json", "--registry", str(path)]).output)
    by_name = {model["name"]: model for model in listing["models"]}
    assert by_name["my-tsm"]["weights"] == "local file" and by_name["my-tsm"]["registry"] == str(path)
    assert by_name["tsm-r50-k400"]["url"] == "https://mirror.example.org/tsm.pth"
    assert by_name["tsm-r50-k400"]["weights"] == "downloadable"
    assert by_name["tsi-r50-sthv1"]["weights"] == "none published"
    assert by_name["tam-r50-sthv1"]["weights"] == "manual download"


def test_models_table_lists_entries_and_architectures():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    rows = {line.split()[0]: line.split() for line in result.output.splitlines() if line.strip()}
    assert rows["tcm-r50-sthv1"][1:] == ["tcm-r50", "sthv1", "8", "52.2", "35.3", "downloadable"]
    assert rows["tam-r50-sthv1"][-2:] == ["manual", "download"]
    assert rows["stc-r50-sthv1"][-2:] == ["none", "published"]
    assert "stc-light-r101" in result.output and "tefe-r18" in result.output


# ------------------------------------------------------------------------------------------ hostile files

BOMB = "\n".join(  # 9 levels of 9 aliases: 9**9 strings once expanded, ~400 bytes on disk
    ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    + ["models:", "  x:", "    arch: *a8", "    num_classes: 1", "    frames: 1", ""]
)


def assert_one_line_naming(path: Path, reason: str) -> str:
    with pytest.raises(RegistryError) as error:
        registry.load_registry(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message, message
    assert len(message) < 600, message
    result = runner.invoke(app, ["models", "--registry", str(path)])
    assert result.exit_code == 2 and reason in result.output and "Traceback" not in result.output
    return message


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path, monkeypatch):
    path = write(tmp_path / "bomb.yaml", BOMB)
    assert len(BOMB) < 500
    assert_one_line_naming(path, "aliases (*name) expand to more than 10000 values")
    # read by every command when it sits in $VTEMPO_HOME
    home = tmp_path / "home"
    home.mkdir()
    (home / "checkpoints.yaml").write_text(BOMB, encoding="utf-8")
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 2 and "checkpoints.yaml: its aliases" in result.output

    write(path, "anchor: &x [1, 2, 3]\nmodels:\n  self: &s {arch: *s}\n")
    assert_one_line_naming(path, "alias *s refers to itself or to no anchor")


def test_small_aliases_still_load_as_in_the_builtin_registry(tmp_path):
    text = (
        "models:\n  one:\n    arch: tsm-r50\n    num_classes: 10\n    frames: 8\n    mean: &m [0.5, 0.5, 0.5]\n"
        "  two:\n    arch: tsm-r50\n    num_classes: 10\n    frames: 8\n    mean: *m\n"
    )
    entries = registry.load_registry(write(tmp_path / "user.yaml", text))
    assert entries["one"].mean == entries["two"].mean == (0.5, 0.5, 0.5)
    assert "*imagenet_mean" in registry.builtin_registry_path().read_text()  # the built-in file uses aliases


def test_registry_size_depth_and_encoding_are_bounded(tmp_path, monkeypatch):
    deep = write(tmp_path / "deep.yaml", "models: " + "[" * 5000 + "]" * 5000 + "\n")
    assert_one_line_naming(deep, "nested more than 32 levels deep (set VTEMPO_REGISTRY_MAX_DEPTH to raise")

    latin = tmp_path / "latin.yaml"
    latin.write_bytes("models:\n  caf\xe9: {arch: tsm-r50}\n".encode("latin-1"))
    assert_one_line_naming(latin, "not UTF-8 text (byte 0xe9 at offset 13)")

    big = write(tmp_path / "big.yaml", "# " + "x" * 5000 + "\nmodels: {}\n")
    monkeypatch.setenv("VTEMPO_REGISTRY_MAX_BYTES", "4096")  # (the built-in file is larger: read it directly)
    with pytest.raises(RegistryError, match=r"big.yaml: larger than 4096 bytes, too large for a registry \(set "
                                            r"VTEMPO_REGISTRY_MAX_BYTES to raise the limit of 4096\)$"):
        registry.read_registry_file(big)
    monkeypatch.setenv("VTEMPO_REGISTRY_MAX_BYTES", "100000")
    assert registry.read_registry_file(big) == {}


@pytest.mark.parametrize(
    "spec, field, reason",
    [
        ({**BASE, "input_size": -5}, "'bad'.input_size", "must be between 8 and 1024, got -5"),
        ({**BASE, "frames": 100000}, "'bad'.frames", "must be between 1 and 256, got 100000 (set VTEMPO_MAX_FRAMES"),
        ({**BASE, "num_classes": 0}, "'bad'.num_classes", "must be between 1 and 100000, got 0"),
        ({**BASE, "resize": [256, -1]}, "'bad'.resize", "expected a short side or [height, width]"),
        ({**BASE, "std": [0.2, 0, 0.2]}, "'bad'.std", "expected a list of 3 positive numbers"),
        ({**BASE, "protocol": {"clips": 100000}}, "'bad'.protocol.clips", "must be between 1 and 32, got 100000"),
        ({**BASE, "protocol": {"clips": 0}}, "'bad'.protocol.clips", "must be between 1 and 32, got 0"),
        ({**BASE, "protocol": {"sampling": "stride", "stride": 0}}, "'bad'.protocol.stride", "must be between 1 and 64"),
        ({**BASE, "frames": list(range(2000))}, "'bad'.frames", "expected int, got [0, 1, 2, 3, ...]"),
        ({**BASE, "weights": {"url": "https://h/x", "sha256": 12345678}}, "'bad'.weights.sha256",
         "YAML read this all-digit hash as a number; put it in quotes"),
    ],
)
def test_bounds_and_short_messages(tmp_path, spec, field, reason):
    path = write(tmp_path / "user.yaml", {"bad": spec})
    message = assert_one_line_naming(path, reason)
    assert message.startswith(f"{path}: model {field}"), message


def test_a_limit_is_raised_by_its_environment_variable(tmp_path, monkeypatch):
    path = write(tmp_path / "user.yaml", {"many": {**BASE, "protocol": {"clips": 40}}})
    with pytest.raises(RegistryError, match="VTEMPO_MAX_CLIPS"):
        registry.load_registry(path)
    monkeypatch.setenv("VTEMPO_MAX_CLIPS", "64")
    registry._load.cache_clear()
    assert registry.load_registry(path)["many"].protocol.clips == 40


def test_label_files_are_read_with_a_bound(tmp_path, monkeypatch):
    names = tmp_path / "names.txt"
    names.write_text("a\n\nb\n" + "c" * 40 + "\n")
    assert registry.read_labels(names) == ["a", "b", "c" * 40]
    monkeypatch.setenv("VTEMPO_MAX_CLASSES", "2")
    monkeypatch.setenv("VTEMPO_MAX_CLASS_NAME_CHARS", "8")
    with pytest.raises(UsageError, match=r"names.txt: longer than a list of 2 class names can be"):
        registry.read_labels(names)
    if Path("/dev/zero").exists():
        with pytest.raises(UsageError, match="longer than a list"):
            registry.read_labels("/dev/zero")


def test_numeric_entry_names_are_names(tmp_path):
    path = write(tmp_path / "user.yaml", "models:\n  2024:\n    arch: tsm-r50\n    num_classes: 10\n    frames: 8\n")
    assert registry.load_registry(path)["2024"].arch == "tsm-r50"
