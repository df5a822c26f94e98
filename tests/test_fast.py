"""The inference fast paths of `vtempo.fast`: each computes the model's function (fp32 logits within
1e-5 relative of the reference model's), and the choice between TSM's ways of shifting goes to the
faster one, measured once and remembered."""
from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from vtempo.fast import FAST_PATHS, prepare, swap_in
from vtempo.fast.compile import drop_forward_caches
from vtempo.fast.fuse import _FusedBlock, fuse_block_post_ops
from vtempo.fast.pack import _PackedConv, bf16_packing_available, pack_conv_weights, packing_available
from vtempo.fast.choose import Chooser, time_alternating
from vtempo.fast.fold import fold_batch_norms
from vtempo.fast.shift import WAYS, ShiftedPointwiseConv
from vtempo.models import FAMILIES, build
from vtempo.models.base import TemporalModule
from vtempo.models.tsm import TemporalShift, temporal_shift
from vtempo.runtime import autocast


def with_random_statistics(arch: str, frames: int = 4) -> nn.Module:
    torch.manual_seed(0)
    model = build(arch, num_classes=5, frames=frames)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):  # BN at init is the identity: make it bite
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(module.weight, 1.0, 0.3)
            nn.init.normal_(module.bias, 0.0, 0.3)
    return model.eval()


def favouring(way: str) -> Chooser:
    """A chooser, remembering nothing on disk, whose measurements say `way` is the fastest."""
    return Chooser(None, measure=lambda candidates: {name: 0.0 if name == way else 1.0 for name in candidates})


def assert_close_logits(got: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


# --- TSM's ways of shifting ---------------------------------------------------------------------------


@pytest.mark.parametrize("way", sorted(WAYS))
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("clips, frames", [(1, 8), (3, 4)])
def test_every_way_is_the_conv_of_the_shifted_copy(way, bias, clips, frames):
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 24, 1, bias=bias).to(memory_format=torch.channels_last)
    x = torch.randn(clips * frames, 32, 5, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = conv(temporal_shift(x, frames))
        out = WAYS[way](x, conv, frames, 8)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("way", sorted(WAYS))
def test_every_way_in_bf16_is_the_conv_of_the_shifted_copy_up_to_bf16_rounding(way):
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 32, 1).to(memory_format=torch.channels_last)
    x = torch.randn(8, 64, 6, 6).contiguous(memory_format=torch.channels_last).bfloat16()
    with torch.inference_mode(), autocast(torch.device("cpu"), "bf16"):
        expected = conv(temporal_shift(x.float(), 8).bfloat16())
        out = WAYS[way](x, conv, 8, 8)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2 * float(expected.abs().max()))


def test_the_in_place_shift_gives_the_copys_result_exactly_and_leaves_its_input_as_it_was():
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 24, 1).to(memory_format=torch.channels_last)
    x = torch.randn(2 * 4, 32, 5, 7).contiguous(memory_format=torch.channels_last)
    before = x.clone()
    with torch.inference_mode():
        assert torch.equal(WAYS["in_place"](x, conv, 4, 8), WAYS["copy"](x, conv, 4, 8))
    assert torch.equal(x, before)

    seen = []

    def failing(shifted):
        seen.append(shifted.clone())
        raise RuntimeError("out of memory")

    with torch.inference_mode(), pytest.raises(RuntimeError):
        WAYS["in_place"](x, failing, 4, 8)
    assert torch.equal(seen[0], temporal_shift(before, 4)) and torch.equal(x, before)


@pytest.mark.parametrize("way", sorted(WAYS))
def test_the_chosen_way_runs_and_gives_the_logits_of_the_reference(way):
    model = with_random_statistics("tsm-r14w16")  # bottlenecks: every conv1 is 1×1
    clip = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        expected = model(clip)
    chooser = favouring(way)
    prepared = prepare(copy.deepcopy(model), torch.device("cpu"), skip=("shift",))
    assert swap_in(prepared, "shift", torch.device("cpu"), chooser=chooser) == 4
    ran = []
    for module in prepared.modules():
        if isinstance(module, ShiftedPointwiseConv):
            module.register_forward_hook(lambda m, inputs, _: ran.append(m.way(inputs[0])))
    with torch.inference_mode():
        got = prepared(clip)
    assert ran == [way] * 4 and set(chooser.choices.values()) == {way}
    assert_close_logits(got, expected)


def test_with_autograd_on_the_shift_runs_the_reference():
    model = prepare(with_random_statistics("tsm-r14w16"), torch.device("cpu"), skip=("shift",))
    swap_in(model, "shift", torch.device("cpu"), chooser=favouring("gemm"))
    shift = model.backbone.layer1[0].conv1
    x = torch.randn(8, shift.net.in_channels, 8, 8).contiguous(memory_format=torch.channels_last)
    shift.frames = 4
    with torch.enable_grad():
        assert shift.way(x) == "copy"
    with torch.inference_mode():
        assert shift.way(x) == "gemm"
        assert shift.way(x.contiguous()) == "copy"  # the strided GEMMs need channels-last rows


def test_only_shifts_around_pointwise_convs_are_swapped_and_the_state_dict_keeps_its_keys():
    basic = prepare(with_random_statistics("tsm-r10w8"), torch.device("cpu"))  # BasicBlock: 3×3 conv1
    assert basic.fast_paths["shift"] == 0 and any(type(m) is TemporalShift for m in basic.modules())
    model = with_random_statistics("tsm-r14w16")
    keys = set(prepare(copy.deepcopy(model), torch.device("cpu"), skip=("shift",)).state_dict())
    prepared = prepare(model, torch.device("cpu"))
    assert prepared.fast_paths["shift"] == 4 and not any(type(m) is TemporalShift for m in prepared.modules())
    assert set(prepared.state_dict()) == keys


def test_stand_ins_reach_the_modules_whose_own_class_names_them(monkeypatch):
    from vtempo.fast import STAND_INS
    from vtempo.models.base import module_classes

    named = {name for cls in module_classes() for name in vars(cls).get("fast_swaps", ())}
    assert named == set(STAND_INS)  # every stand-in is named by a paper's module, and every name is one
    online = prepare(with_random_statistics("tsm-online-r14w16"), torch.device("cpu"))
    assert online.fast_paths["shift"] == 0  # OnlineShift, a TemporalShift subclass, has its own forward
    monkeypatch.setattr(TemporalShift, "fast_swaps", ())
    prepared = prepare(with_random_statistics("tsm-r14w16"), torch.device("cpu"))
    assert prepared.fast_paths["shift"] == 0 and any(type(m) is TemporalShift for m in prepared.modules())


def test_swapped_shifts_learn_the_clip_length_from_the_input():
    model = with_random_statistics("tsm-r14w16", frames=4)
    reference = copy.deepcopy(model)
    prepared = prepare(model, torch.device("cpu"))
    for frames in (4, 6):
        clip = torch.randn(1, frames, 3, 32, 32)
        with torch.inference_mode():
            assert_close_logits(prepared(clip), reference(clip))


# --- the chooser --------------------------------------------------------------------------------------


def test_the_chooser_measures_once_and_remembers_across_processes(tmp_path):
    path = tmp_path / "cache" / "choices.json"
    asked = []

    def measure(candidates):
        asked.append(sorted(candidates))
        return {"a": 3.0, "b": 1.0, "c": 2.0}

    candidates = {name: (lambda: None) for name in "abc"}
    chooser = Chooser(path, measure)
    assert chooser.choose("key", candidates) == "b" and chooser.choose("key", candidates) == "b"
    assert asked == [["a", "b", "c"]] and json.loads(path.read_text()) == {"key": "b"}

    def refuse(candidates):
        raise AssertionError("measured again")

    later = Chooser(path, refuse)  # another process on the same machine
    assert later.choose("key", candidates) == "b"
    # a remembered choice that is no candidate any more is measured again
    assert Chooser(path, lambda c: {"x": 1.0, "y": 0.5}).choose("key", {"x": None, "y": None}) == "y"


def test_the_reference_is_kept_unless_another_way_is_clearly_faster():
    candidates = {"reference": None, "other": None}
    assert Chooser(None, lambda c: {"reference": 1.0, "other": 0.97}).choose("k", candidates) == "reference"
    assert Chooser(None, lambda c: {"reference": 1.0, "other": 0.90}).choose("k", candidates) == "other"
    assert Chooser(None, lambda c: {"reference": 0.90, "other": 1.0}).choose("k", candidates) == "reference"


def test_a_damaged_or_foreign_choice_file_is_ignored_and_an_unwritable_one_only_costs_time(tmp_path):
    path = tmp_path / "choices.json"
    for text in ("{not json", "[1, 2]", json.dumps({"key": 3})):
        path.write_text(text)
        assert Chooser(path, lambda c: {"a": 1.0, "b": 0.0}).choose("key", {"a": None, "b": None}) == "b"
    blocked = tmp_path / "file"
    blocked.write_text("")
    chooser = Chooser(blocked / "choices.json", lambda c: {"a": 0.0, "b": 1.0})  # its folder is a file
    assert chooser.choose("key", {"a": None, "b": None}) == "a"


def test_time_alternating_takes_the_median_of_alternating_calls():
    order = []
    times = time_alternating({"fast": lambda: order.append("fast"), "slow": lambda: order.append("slow")})
    assert set(times) == {"fast", "slow"} and all(t >= 0 for t in times.values())
    assert order[:4] == ["fast", "slow", "fast", "slow"] and order.count("fast") == order.count("slow") >= 8


# --- the registry and the model interface they use ----------------------------------------------------


@pytest.mark.parametrize("family", [f if f == "tsm" else pytest.param(f, marks=pytest.mark.slow) for f in sorted(FAMILIES)])
def test_every_fast_path_alone_and_all_together_keep_the_fp32_logits(family):
    model = with_random_statistics(f"{family}-r14w16")
    clip = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        expected = model(clip)
    for kept in [*([name] for name in FAST_PATHS), list(FAST_PATHS)]:
        prepared = prepare(copy.deepcopy(model), torch.device("cpu"),
                           skip=tuple(name for name in FAST_PATHS if name not in kept))
        with torch.inference_mode():
            assert_close_logits(prepared(clip), expected)


def packed_model(way: str) -> tuple[nn.Module, list]:
    from vtempo.fast.pack import _PackedConv, pack_conv_weights, packing_available

    if not packing_available():
        pytest.skip("this torch has no oneDNN convolution to pack weights for")
    model = prepare(with_random_statistics("tsm-r14w16"), torch.device("cpu"), skip=("pack",))
    assert pack_conv_weights(model, torch.device("cpu"), favouring(way)) > 10
    return model, [m.forward for m in model.modules() if isinstance(vars(m).get("forward"), _PackedConv)]


def test_packed_convolutions_run_packed_follow_new_weights_and_keep_a_few_shapes():
    prepared, packed = packed_model("packed")
    twin = prepare(with_random_statistics("tsm-r14w16"), torch.device("cpu"), skip=("pack",))
    with torch.inference_mode():
        clip = torch.randn(1, 4, 3, 32, 32)
        assert_close_logits(prepared(clip), twin(clip))
        assert not any(p.packs for p in packed)  # a shape's first call runs plain: one call would only pay the packing
        for clips in (1, 2, 3, 4, 5, 1):
            clip = torch.randn(clips, 4, 3, 32, 32)
            for _ in range(2):
                assert_close_logits(prepared(clip), twin(clip))
    # the last SHAPES input shapes, newest last (the shift's fast path may call its convs' weights itself)
    assert sum(len(p.packs) == p.SHAPES and list(p.packs)[-1][0][0] == 4 for p in packed) >= 12

    torch.manual_seed(1)
    for parameter in twin.parameters():
        parameter.data.normal_(0, 0.05)
    prepared.load_state_dict(twin.state_dict())  # in place: the packed weights are stale now
    clip = torch.randn(1, 4, 3, 32, 32)
    with torch.inference_mode():
        assert_close_logits(prepared(clip), twin(clip))
    assert sum(len(p.packs) == 1 for p in packed) >= 12  # packed again from the new weights

    copied = copy.deepcopy(prepared)  # (int8 quantization copies a prepared model) without the packs
    with torch.inference_mode():
        assert_close_logits(copied(clip), twin(clip))

    prepared(clip).sum().backward()  # autograd on: the module's own forward, on the parameters
    assert prepared.backbone.conv1.weight.grad is not None


def test_bf16_packing_follows_what_onednn_says_of_this_cpu():
    conv = torch.nn.Conv2d(8, 8, 1).eval()
    packed = _PackedConv(conv, None)
    with torch.inference_mode(), autocast(torch.device("cpu"), "bf16"):
        dtype = packed.packed_dtype(torch.randn(1, 8, 4, 4))
    assert dtype == (torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None)


def test_under_bf16_autocast_packed_convolutions_run_in_bf16_on_weights_cast_once():
    prepared, packed = packed_model("packed")
    twin = prepare(with_random_statistics("tsm-r14w16"), torch.device("cpu"), skip=("pack",))
    clip = torch.randn(2, 4, 3, 32, 32)
    with torch.inference_mode(), autocast(torch.device("cpu"), "bf16"):
        prepared(clip)  # a shape's first call runs plain
        got, expected = prepared(clip).float(), twin(clip).float()
    torch.testing.assert_close(got, expected, rtol=0.02, atol=0.02 * float(expected.abs().max()))  # bf16 rounding
    if not bf16_packing_available():  # a CPU without oneDNN's bf16 reorder: bf16 runs plain, fp32 still packed
        assert not any(p.packs for p in packed)
        with torch.inference_mode():
            for _ in range(2):
                assert_close_logits(prepared(clip), twin(clip))
        assert sum({dtype for _, dtype in p.packs} == {torch.float32} for p in packed) >= 12
        return
    assert sum(any(dtype == torch.bfloat16 for _, dtype in p.packs) for p in packed) >= 12
    assert all(pack.dtype == bias.dtype == torch.bfloat16 for p in packed for (_, dtype), (pack, bias) in p.packs.items()
               if dtype == torch.bfloat16 and bias is not None)
    with torch.inference_mode():  # fp32 again: packed apart from the bf16 weights
        for _ in range(2):
            assert_close_logits(prepared(clip), twin(clip))
    assert sum({dtype for _, dtype in p.packs} == {torch.float32, torch.bfloat16} for p in packed) >= 12


def test_where_packing_is_measured_slower_the_plain_convolution_runs():
    prepared, packed = packed_model("plain")
    twin = prepare(with_random_statistics("tsm-r14w16"), torch.device("cpu"), skip=("pack",))
    clip = torch.randn(2, 4, 3, 32, 32)
    with torch.inference_mode():
        assert_close_logits(prepared(clip), twin(clip))
    assert not any(p.packs for p in packed) and sum(bool(p.chosen) for p in packed) >= 12


# --- a block's ReLUs and residual add as post-ops of its packed convolutions ---------------------------


def fused_model(arch: str, way: str) -> tuple[nn.Module, list]:
    if not packing_available():
        pytest.skip("this torch has no oneDNN convolution to fuse post-ops into")
    model = prepare(with_random_statistics(arch), torch.device("cpu"), skip=("pack",))
    pack_conv_weights(model, torch.device("cpu"), favouring("packed"))
    assert fuse_block_post_ops(model, torch.device("cpu"), favouring(way)) == 4
    return model, [m.forward for m in model.modules() if isinstance(vars(m).get("forward"), _FusedBlock)]


def post_op_calls(monkeypatch) -> list[tuple[bool, bool]]:
    """(relu, add) of every packed convolution called from now on."""
    calls, packed = [], _PackedConv.packed

    def spy(self, x, dtype=torch.float32, relu=False, add=None):
        calls.append((relu, add is not None))
        return packed(self, x, dtype, relu, add)

    monkeypatch.setattr(_PackedConv, "packed", spy)
    return calls


@pytest.mark.parametrize("arch", [f"{family}-{backbone}" for family in sorted(FAMILIES) for backbone in ("r14w16", "r10w8")])
def test_fused_blocks_give_the_logits_of_the_reference_in_every_family(arch, monkeypatch):
    reference = prepare(with_random_statistics(arch), torch.device("cpu"), skip=("pack",))
    prepared, fused = fused_model(arch, "fused")
    clip = torch.randn(2, 4, 3, 32, 32)
    with torch.inference_mode():
        prepared(clip)  # packs and chooses
        calls = post_op_calls(monkeypatch)
        got = prepared(clip)
        assert_close_logits(got, reference(clip))
    # each block whose last convolution a paper left plain (or put its modules before) ends in one
    # convolution + add + ReLU; every family fuses somewhere, TSN everywhere
    assert calls.count((True, True)) == sum(f.slots[-1][2] is not None for f in fused)
    assert calls.count((True, False)) + calls.count((True, True)) >= 4
    if arch.startswith("tsn-"):
        assert calls.count((True, True)) == 4 and calls.count((True, False)) == (8 if arch.endswith("r14w16") else 4)


@pytest.mark.parametrize("way", sorted(WAYS))
def test_fused_tsm_blocks_run_the_shifts_convolution_with_its_relu(way, monkeypatch):
    reference = prepare(with_random_statistics("tsm-r14w16"), torch.device("cpu"), skip=("pack",))
    prepared, fused = fused_model("tsm-r14w16", "fused")
    shifts = [m for m in prepared.modules() if isinstance(m, ShiftedPointwiseConv)]
    for shift in shifts:
        shift.chooser = favouring(way)
    clip = torch.randn(2, 4, 3, 32, 32)
    with torch.inference_mode():
        prepared(clip)
        calls = post_op_calls(monkeypatch)
        assert_close_logits(prepared(clip), reference(clip))
    assert len(shifts) == 4 and all(f.slots[0][2].shift is not None for f in fused)
    # conv2 + ReLU and conv3 + add + ReLU in every block, and the shift's conv1 + ReLU where the way
    # calls the convolution (the GEMMs' way applies the ReLU to its output)
    assert calls.count((True, True)) == 4 and calls.count((True, False)) == (4 if way == "gemm" else 8)


def test_where_fusing_is_measured_slower_the_blocks_run_their_own_forward(monkeypatch):
    reference = prepare(with_random_statistics("tsn-r14w16"), torch.device("cpu"), skip=("pack",))
    prepared, fused = fused_model("tsn-r14w16", "plain")
    clip = torch.randn(2, 4, 3, 32, 32)
    with torch.inference_mode():
        prepared(clip)
        calls = post_op_calls(monkeypatch)
        assert_close_logits(prepared(clip), reference(clip))
    assert calls and not any(relu or add for relu, add in calls) and all(f.chosen for f in fused)


def test_fused_blocks_leave_training_autograd_and_compiling_to_the_blocks_own_forward(monkeypatch):
    prepared, fused = fused_model("tsm-r14w16", "fused")
    clip = torch.randn(2, 4, 3, 32, 32)
    calls = post_op_calls(monkeypatch)
    prepared(clip).sum().backward()  # autograd on
    assert not calls and prepared.backbone.layer1[0].conv3.weight.grad is not None
    copied = copy.deepcopy(prepared)  # (int8 quantization copies a prepared model)
    assert all(not f.chosen for m in copied.modules() if isinstance(f := vars(m).get("forward"), _FusedBlock))
    drop_forward_caches(prepared)
    assert not any(isinstance(vars(m).get("forward"), (_FusedBlock, _PackedConv)) for m in prepared.modules())


def test_fused_online_tsm_steps_give_the_logits_of_the_unfused_model():
    """Measuring a fused block times its convolutions alone: the online shift before one keeps the cache
    of the frames it has seen (running the whole block again to time it would move that cache on)."""
    if not packing_available():
        pytest.skip("this torch has no oneDNN convolution to fuse post-ops into")
    from vtempo.models.tsm import OnlineTSM

    reference = prepare(with_random_statistics("tsm-online-r14w16"), torch.device("cpu"), skip=("fuse",))
    fused = prepare(with_random_statistics("tsm-online-r14w16"), torch.device("cpu"))
    assert fused.fast_paths["fuse"] == 4  # each choice measured for real
    expected, got = OnlineTSM(reference), OnlineTSM(fused)
    with torch.inference_mode():
        for _ in range(4):
            frame = torch.randn(3, 32, 32)
            assert_close_logits(got.step(frame), expected.step(frame))


def test_prepare_names_an_unknown_fast_path():
    with pytest.raises(ValueError, match="unknown fast path.*nonsense"):
        prepare(with_random_statistics("tsn-r10w8"), torch.device("cpu"), skip=("nonsense",))


HEAP_PROBE = """
import resource, sys, torch
from vtempo.fast import prepare
from vtempo.models import build
from vtempo.runtime import malloc_thresholds
malloc_thresholds(1 << 17, 1 << 17)  # every buffer over 128 KiB mapped afresh and unmapped when freed
model = prepare(build("tsn-r18", frames=4), torch.device("cpu"), skip=tuple(sys.argv[1:]))
clip = torch.randn(1, 4, 3, 112, 112)
with torch.inference_mode():
    model(clip)
    model(clip)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(clip)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, model.fast_paths.get("heap"))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds it sets are glibc malloc's")
def test_with_the_heap_fast_path_a_call_reuses_the_memory_the_last_one_freed():
    def third_call(*skip: str) -> tuple[int, str]:
        opted_in = {**os.environ, "VTEMPO_KEEP_FREED_BUFFERS": "1"}
        out = subprocess.run([sys.executable, "-c", HEAP_PROBE, *skip], capture_output=True, text=True, check=True,
                             env=opted_in)
        faults, applied = out.stdout.split()
        return int(faults), applied

    kept, applied = third_call()
    mapped_afresh, not_applied = third_call("heap")
    assert (applied, not_applied) == ("1", "None")
    # R-18's activations at 4×112² are about 15 MB: nearly 4,000 pages each time they are mapped afresh
    assert mapped_afresh > 1000 and kept < mapped_afresh / 20, (kept, mapped_afresh)


# Records every setting of malloc's thresholds the process makes, then loads a model or runs the program.
MALLOC_PROBE = """
import json, sys
import vtempo.runtime as runtime
settings, setting = [], runtime.malloc_thresholds
runtime.malloc_thresholds = lambda *values: settings.append(values) or setting(*values)
if sys.argv[1] == "load":
    import vtempo
    rec = vtempo.load("tsn-demo", device="cpu")
    heap = rec.model.fast_paths["heap"]
else:
    from vtempo.cli import run
    sys.argv = ["vtempo", "classify", sys.argv[2], "--model", "tsn-demo", "--device", "cpu", "--workers", "0"]
    try:
        run()
    except SystemExit as end:
        assert end.code in (0, None), end.code
    heap = None
print("SETTINGS", json.dumps({"settings": settings, "heap": heap}))
"""


def malloc_settings(*args: str, **env: str) -> dict:
    environment = {key: value for key, value in os.environ.items() if key != "VTEMPO_KEEP_FREED_BUFFERS"}
    repo = str(Path(__file__).resolve().parent.parent)  # this tree's vtempo, whatever is installed
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", MALLOC_PROBE, *args], capture_output=True, text=True, check=True,
                         env={**environment, **env}, timeout=300)
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("SETTINGS "))[9:])


def test_load_in_a_process_of_yours_leaves_malloc_alone_and_the_program_keeps_freed_buffers():
    assert malloc_settings("load") == {"settings": [], "heap": 0}
    assert malloc_settings("load", VTEMPO_KEEP_FREED_BUFFERS="1")["settings"] == [[1 << 30, 1 << 30]]
    clip = str(Path(__file__).resolve().parent.parent / "examples" / "clips" / "grow.mp4")
    assert [1 << 30, 1 << 30] in malloc_settings("run", clip)["settings"]
    assert malloc_settings("run", clip, VTEMPO_KEEP_FREED_BUFFERS="0")["settings"] == []


class _Gate(TemporalModule):
    """A wrapper that changes only its conv's input: it says so through `output_conv`."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x * 0.5)

    def output_conv(self):
        return self.conv


def test_bn_folding_finds_a_wrapped_conv_through_output_conv_alone():
    torch.manual_seed(0)
    net = nn.Sequential(_Gate(nn.Conv2d(3, 4, 3)), nn.BatchNorm2d(4)).eval()
    net[1].running_mean.normal_()
    net[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = net(x)
        assert fold_batch_norms(net) == 1 and isinstance(net[1], nn.Identity)
        torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
    assert TemporalModule().output_conv() is None


# --- compiled inference -------------------------------------------------------------------------------

# Compiling takes minutes on a small CPU the first time (seconds once inductor's cache holds the graphs).
@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_compiled_model_gives_the_eager_logits(family):
    from vtempo.fast.compile import compile_model

    backbone = "r10w8" if family in ("tsn", "tam") else "r14w16"  # both block types among the families
    prepared = prepare(with_random_statistics(f"{family}-{backbone}"), torch.device("cpu"))
    clip = torch.randn(2, 4, 3, 32, 32)
    with torch.inference_mode():
        expected = prepared(clip)
        got = compile_model(prepared)(clip)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.slow
def test_compiling_freezes_the_weights_and_keeps_tsms_shift_one_op(monkeypatch):
    """Frozen weights are what let inductor pack the convolutions; a traced-through shift becomes kernels
    slower than the network around it, so the compiled graph calls the eager shift as one op."""
    import torch._inductor.config
    import torch._inductor.freezing as freezing

    import vtempo.fast.shift as shift
    from vtempo.fast.compile import compile_model

    inputs_left, shifted = [], []  # graph inputs left after freezing; calls of the eager shift
    freeze, temporal_shift = freezing.freeze, shift.temporal_shift

    def counting_freeze(*args, **kwargs):
        graph, kept = freeze(*args, **kwargs)
        inputs_left.append(len(kept))
        return graph, kept

    monkeypatch.setattr(freezing, "freeze", counting_freeze)
    monkeypatch.setattr(shift, "temporal_shift", lambda *a: shifted.append(1) or temporal_shift(*a))
    torch._dynamo.reset()
    prepared = prepare(with_random_statistics("tsm-r14w16"), torch.device("cpu"))
    clip = torch.randn(2, 4, 3, 32, 32)
    with torch.inference_mode(), torch._inductor.config.patch(force_disable_caches=True):
        expected = prepared(clip)
        compiled = compile_model(prepared)
        compiled(clip)
        shifted.clear()  # (tracing calls it too)
        got = compiled(clip)
    assert inputs_left and max(inputs_left) <= 2  # the clip (and maybe a shape), not the weights
    assert len(shifted) == prepared.fast_paths["shift"]
    assert not torch._inductor.config.freezing  # on only while the compiled model is called
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.slow
def test_compiled_kernels_go_to_the_vtempo_cache_and_a_second_compilation_reuses_them(tmp_path, monkeypatch):
    """With packed (oneDNN) weights inductor does not cache whole graphs ('mkldnn tensors unpickleable'):
    a new process lowers the graph again, but finds every compiled C++ kernel in the cache."""
    from vtempo.fast.compile import cache_folder, compile_model

    monkeypatch.setenv("VTEMPO_HOME", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert cache_folder() == tmp_path / "inductor"
    clip = torch.randn(1, 4, 3, 32, 32)
    written = []
    with torch.inference_mode():
        for _ in range(2):
            torch._dynamo.reset()  # as a new process would: nothing compiled in memory
            compile_model(prepare(with_random_statistics("tsn-r10w8"), torch.device("cpu")))(clip)
            written.append(sorted((tmp_path / "inductor").rglob("*.so")))
    assert written[0] and written[1] == written[0]


def test_compile_pays_only_when_the_time_saved_exceeds_the_compile_time():
    from vtempo.fast.compile import compile_pays

    assert compile_pays(clips=1000, eager_seconds_per_clip=0.5, compile_seconds=60, speedup=1.25)  # saves 100 s
    assert not compile_pays(clips=100, eager_seconds_per_clip=0.5, compile_seconds=60, speedup=1.25)  # saves 10 s
    assert not compile_pays(clips=10**6, eager_seconds_per_clip=0.5, compile_seconds=1, speedup=1.0)


# --- GPU paths, where they have a CPU meaning ---------------------------------------------------------


def test_the_cuda_graph_wrapper_runs_the_model_itself_off_the_gpu():
    from vtempo.fast.cudagraph import GraphedModel

    model = prepare(with_random_statistics("tsm-r14w16"), torch.device("cpu"))
    graphed = GraphedModel(model)
    clip = torch.randn(1, 4, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(graphed(clip), model(clip)) and not graphed._graphs
        assert graphed.features(clip).shape == (1, 4, model.fc.in_features)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_replayed_cuda_graph_gives_the_eager_logits():
    from vtempo.fast.cudagraph import GraphedModel

    device = torch.device("cuda")
    model = prepare(with_random_statistics("tsm-r14w16"), device)
    graphed = GraphedModel(model)
    with torch.inference_mode():
        for seed in range(2):  # the second clip replays the graph captured for the first
            torch.manual_seed(seed)
            clip = torch.randn(1, 4, 3, 32, 32, device=device)
            torch.testing.assert_close(graphed(clip), model(clip), rtol=1e-5, atol=1e-5)
    assert len(graphed._graphs) == 1


def test_the_exportable_shift_is_the_reference_shift():
    from vtempo.fast.shift import shift_by_concatenation

    x = torch.randn(6, 16, 3, 5).contiguous(memory_format=torch.channels_last)
    for frames in (2, 3, 6):
        assert torch.equal(shift_by_concatenation(x, frames, 8), temporal_shift(x, frames))


def test_the_one_op_shift_on_int8_codes_fills_with_the_zero_point():
    from vtempo.fast.shift import compiled_shift

    torch.manual_seed(0)
    codes = torch.randint(0, 256, (6, 16, 3, 5), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    scale, zero_point = 0.05, 7
    values = (codes.float() - zero_point) * scale
    requantized = (temporal_shift(values, 3) / scale).round().add(zero_point).to(torch.uint8)
    shifted = compiled_shift(codes, 3, 8, float(zero_point))
    assert torch.equal(shifted, requantized) and shifted.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(compiled_shift(values, 3, 8), temporal_shift(values, 3))


# --- int8 ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_int8_model_follows_the_fp32_logits_and_is_cached(family, tmp_path, monkeypatch):
    pytest.importorskip("torchao")
    from vtempo.fast import quantize as quantization

    monkeypatch.setenv("VTEMPO_HOME", str(tmp_path))
    model = prepare(with_random_statistics(f"{family}-r14w16"), torch.device("cpu"))
    torch.manual_seed(1)
    calibration = [torch.randn(2, 4, 3, 64, 64) for _ in range(3)]
    clip = torch.randn(2, 4, 3, 64, 64)
    with torch.inference_mode():
        expected = model(clip)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        int8 = quantization.quantize(copy.deepcopy(model), calibration, compile=False)  # compiled: below
    archive_warnings = [w for w in caught if "No complete tensor" in str(w.message)]
    with torch.no_grad():
        got = int8(clip)
    # int8 activations per tensor: a few percent of the largest logit on random weights
    torch.testing.assert_close(got, expected, rtol=0, atol=0.15 * float(expected.abs().max()))
    assert len(list((tmp_path / "int8").glob("*.pt2"))) == 1

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibrated again")

    monkeypatch.setattr(quantization, "_calibrate", no_calibration)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = quantization.quantize(copy.deepcopy(model), calibration, compile=False)  # from the cache
    archive_warnings += [w for w in caught if "No complete tensor" in str(w.message)]
    assert not archive_warnings  # torch's, about weights off the CPU: nothing the user can act on
    with torch.no_grad():
        torch.testing.assert_close(again(clip), got)


@pytest.mark.slow
@pytest.mark.parametrize("branches_in_int8", [False, True], ids=["as-quantized", "tam-branches-in-int8"])
def test_an_int8_model_runs_compiled_or_else_as_its_lowered_graph(branches_in_int8, monkeypatch):
    """TAM compiles with its branches in fp32 (its linears on plain weights); with them in int8 inductor
    fails on its graph with torch 2.14, and the lowered graph runs instead."""
    pytest.importorskip("torchao")
    from vtempo.fast import quantize as quantization
    from vtempo.models.tam import TemporalAdaptiveModule

    if branches_in_int8:
        monkeypatch.setattr(quantization, "FULL_PRECISION",
                            tuple(c for c in quantization.FULL_PRECISION if c is not TemporalAdaptiveModule))
    model = prepare(with_random_statistics("tam-r14w16"), torch.device("cpu"))
    torch.manual_seed(1)
    clip = torch.randn(2, 4, 3, 64, 64)
    lowered = quantization.quantize(copy.deepcopy(model), [clip], cache=False, compile=False)
    quantized = quantization.quantize(copy.deepcopy(model), [clip], cache=False)  # as classify runs it
    assert hasattr(quantized, "_orig_mod") != hasattr(quantized, "compile_failure")
    if not branches_in_int8:
        assert hasattr(quantized, "_orig_mod"), getattr(quantized, "compile_failure", "")
    with torch.inference_mode():
        expected = lowered(clip)
        got = quantized(clip)
    # the same int8 kernels; compiled, the requantizations between them are fused (rounding apart)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-2 * float(expected.abs().max()))


@pytest.mark.slow
def test_tsm_shift_runs_on_int8_codes_bit_for_bit():
    pytest.importorskip("torchao")
    from vtempo.fast import quantize as quantization

    model = prepare(with_random_statistics("tsm-r14w16"), torch.device("cpu"))
    clip = torch.randn(1, 4, 3, 64, 64)
    converted = quantization.quantize(model, [clip], cache=False, lower_graph=False)
    lower = quantization._pt2e()[3]
    with torch.no_grad():
        plain = lower(copy.deepcopy(converted), (clip,))
        rewritten = lower(converted, (clip,))
        assert quantization._shift_in_int8(rewritten) >= 4  # each shifted block (and plain views)
        expected = plain(clip)
        assert torch.equal(rewritten(clip), expected)
        compiled = torch.compile(rewritten)(clip)  # what `quantize` returns by default
    torch.testing.assert_close(compiled, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
