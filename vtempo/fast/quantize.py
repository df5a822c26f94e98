"""int8 inference on x86 CPUs: post-training static quantization, `quantize(model, calibration_clips)`.

The flow is PyTorch's PT2E: export the prepared model's graph, let `X86InductorQuantizer` annotate it
(convolutions, linears and the ops around them: int8 activations per tensor, int8 weights per output
channel), run the calibration clips through it to observe activation ranges, convert, lower it
with torchao's x86 lowering (inductor's constant folding and freezing patterns): each quantize → conv
→ dequantize pattern becomes one oneDNN int8 convolution with its weight pre-packed; then compile the
lowered graph with inductor, which fuses the quantize steps left between the convs (TSM has one per
shifted block) into the surrounding kernels. The quantizer and the PT2E functions live in torchao (`torchao.quantization.pt2e`) since
torch dropped `torch.ao.quantization.quantizer`; torchao is an optional dependency needed only here.

What stays fp32: every op the quantizer does not annotate, so all the temporal modules' own arithmetic
(TSM's shift is a copy; TAM's and TEFE's temporal convs, TSI's attention, TCM's correlation and
soft-argmax are elementwise ops, matmuls and softmaxes; TEFE's 3-d convs, which the quantizer leaves
alone); the temporal modules' 1×1/3×3 convs are quantized like the backbone's, except in the modules
whose paper's file keeps them fp32 (`FULL_PRECISION`, from `TemporalModule.int8_keeps_fp32`): TCM's
dynamics, whose reduction conv and correlation feed a soft-argmax with a temperature of 100, which
int8 would wreck, and TAM's two branches, small ops over T-long sequences that inductor fails to
compile in int8 (a 1-d conv's output length, a tiny linear's packed weight).
TSM's shift is swapped for one opaque op first (`shift.swap_shifts_for_export(as_one_op=True)`): the
reference writes into slices, which an exported graph turns into a copy per slice, and inductor turns
slices and concatenations into kernels slower than the convs around them. After conversion the op
runs on the int8 codes (`_shift_in_int8`), filling with the zero point, in channels-last as the convs want.

A quantized model is cached under `<vtempo home>/int8/`, keyed by the model's weights and the
calibration clips, so a second run with the same model and clips skips the calibration (it still
lowers the graph, seconds, and compiles it, from inductor's cache when that holds it).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.nn as nn

from vtempo.errors import VtempoError
from vtempo.fast.compile import drop_forward_caches, quiet_torch_notices, use_cache_folder
from vtempo.fast.shift import swap_shifts_for_export
from vtempo.models.base import module_classes


def _pt2e():
    quiet_torch_notices()
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as error:
        raise VtempoError(f"int8 needs the torchao package: pip install 'vtempo[int8]' ({error})") from None
    # TSM's shift moves values and computes nothing: like max-pooling, it takes int8 in and gives int8 out
    # with its input's quantization, so the block output before it stays int8 (else: fp32, quantized twice)
    for ops in (x86.int8_in_int8_out_ops, x86.default_quantizable_ops, x86.quantizable_ops):
        ops.add(torch.ops.vtempo.temporal_shift.default)
    return x86, prepare_pt2e, convert_pt2e, lower_pt2e_quantized_to_x86


def require_torchao() -> None:
    """Raises VtempoError, naming the extra to install, when torchao is missing."""
    _pt2e()


# Modules whose convs stay fp32 too (`TemporalModule.int8_keeps_fp32`, set in each paper's file)
FULL_PRECISION: tuple[type[nn.Module], ...] = tuple(cls for cls in module_classes() if cls.int8_keeps_fp32)


def _one_partition_per_call(graph_module: torch.fx.GraphModule) -> None:
    """Name each call of a ReLU module as a source of its own in the export metadata. The quantizer
    groups nodes into patterns by the module they came from, and torchvision's blocks call their one
    `relu` three times: a "ReLU" with three outputs, which it refuses."""
    for node in graph_module.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op != "call_function" or node.meta.get("source_fn_stack") or not stack:
            continue
        fqn, kind = list(stack.values())[-1]
        if kind is torch.nn.ReLU or kind == "torch.nn.modules.activation.ReLU":
            node.meta["source_fn_stack"] = [(f"{fqn}.{node.name}", torch.nn.ReLU)]


def _calibrate(model: nn.Module, clips: list[torch.Tensor]) -> torch.fx.GraphModule:
    """Export, annotate, observe the clips, convert: the graph with int8 quantize/dequantize nodes."""
    x86, prepare_pt2e, convert_pt2e, _ = _pt2e()
    with torch.no_grad():
        exported = torch.export.export(model, (clips[0],)).module()
        _one_partition_per_call(exported)
        quantizer = x86.X86InductorQuantizer()
        quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
        for name, module in model.named_modules():
            if isinstance(module, FULL_PRECISION):
                quantizer.set_module_name_qconfig(name, None)
        observed = prepare_pt2e(exported, quantizer)
        for clip in clips:
            observed(clip)
        return convert_pt2e(observed)


QUANTIZE, DEQUANTIZE = ("quantized_decomposed.quantize_per_tensor.default",
                        "quantized_decomposed.dequantize_per_tensor.default")
SHIFT = "vtempo.temporal_shift.default"
_MOVES = ("aten.view.default", "aten.slice.Tensor", "aten.constant_pad_nd.default", "aten.cat.default", SHIFT)


def _shift_in_int8(graph_module: torch.fx.GraphModule) -> int:
    """Run pure data movement that ends in a quantize (TSM's shift before a quantized conv: view, slice,
    pad, concatenate) on int8 codes instead of floats: the movement's source is quantized once with the
    same parameters (or its dequantize skipped, or an existing quantize of it reused) and the final
    quantize dropped; pads fill with the zero point, the code of 0.0. Quantization is elementwise, so
    the result is bit for bit the same; returns how many were rewritten."""
    graph = graph_module.graph
    rewritten = 0
    for end in list(graph.nodes):
        if str(end.target) != QUANTIZE:
            continue
        chain, roots, frontier = [], set(), [end.args[0]]
        while frontier:
            node = frontier.pop()
            if not isinstance(node, torch.fx.Node) or node in chain or node in roots:
                continue
            if node.op == "call_function" and str(node.target) in _MOVES:
                chain.append(node)
                for arg in node.args:
                    frontier.extend(arg if isinstance(arg, (list, tuple)) else [arg])
            else:
                roots.add(node)
        if not chain or len(roots) != 1 or any(user not in chain and user is not end
                                                for node in chain for user in node.users):
            continue
        root, parameters = next(iter(roots)), tuple(end.args[1:])
        if str(root.target) == DEQUANTIZE and tuple(root.args[1:]) == parameters:
            codes = root.args[0]
        else:
            codes = next((user for user in root.users if str(user.target) == QUANTIZE
                          and tuple(user.args[1:]) == parameters and user is not end), None)
            if codes is None:
                with graph.inserting_after(root):
                    codes = graph.call_function(end.target, (root, *parameters))
        for node in chain:
            node.args = tuple(
                codes if arg is root else [codes if item is root else item for item in arg] if isinstance(arg, list) else arg
                for arg in node.args
            )
            if str(node.target) == "aten.constant_pad_nd.default":
                node.args = (*node.args[:2], int(parameters[1]))
            if str(node.target) == SHIFT:
                node.args = (*node.args[:3], float(parameters[1]))
        end.replace_all_uses_with(end.args[0])
        graph.erase_node(end)
        if not root.users:
            graph.erase_node(root)
        rewritten += 1
    graph.lint()
    graph_module.recompile()
    return rewritten


# part of the cache key: graphs cached in another form are not reused
GRAPH_FORM = "tsm shift as vtempo::temporal_shift; tam branches fp32"


def fingerprint(model: nn.Module, clips: list[torch.Tensor]) -> str:
    """A key for the model's weights and the calibration clips (their bytes)."""
    digest = hashlib.sha256(GRAPH_FORM.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    for clip in clips:
        digest.update(str(tuple(clip.shape)).encode())
        digest.update(clip.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


@contextlib.contextmanager
def _quiet_archive() -> Iterator[None]:
    """torch's archive code warns that weights may not be on the CPU when they are (the int8 archive
    holds CPU weights only): a warning the user cannot act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No complete tensor found in the group", category=UserWarning)
        yield


def cache_path(key: str) -> Path:
    from vtempo.paths import home

    return home() / "int8" / f"{key}.pt2"


def quantize(model: nn.Module, calibration_clips: Iterable[torch.Tensor], *, cache: bool = True,
             lower_graph: bool = True, compile: bool = True) -> nn.Module:
    """An int8 version of the prepared fp32 `model` (`vtempo.fast.prepare`, on the CPU), calibrated on
    `calibration_clips` (float (N, T, 3, S, S) tensors, preprocessed like the model's input, all of one
    shape: the quantized model runs that shape). `model` itself is changed (its cast cache dropped, its
    shifts swapped); pass a copy to keep it. Returns the int8 model lowered to oneDNN's int8 kernels and
    compiled, here, on the first calibration clip (where inductor cannot compile the lowered graph: the
    lowered graph, with the reason in its `compile_failure`; `compile=False`: the lowered graph, which
    runs the same kernels but leaves the quantize ops between them as unfused elementwise passes,
    several times slower for TSM; `lower_graph=False`: the converted graph, which only simulates int8,
    for inspection)."""
    clips = [clip.detach().cpu().float() for clip in calibration_clips]
    if not clips:
        raise VtempoError("int8 calibration needs at least one clip")
    if len({tuple(clip.shape) for clip in clips}) != 1:
        raise VtempoError("int8 calibration clips must all have one shape (the model is exported for it)")
    lower = _pt2e()[3]
    drop_forward_caches(model)
    swap_shifts_for_export(model, as_one_op=True)
    model = model.eval()
    path = cache_path(fingerprint(model, clips)) if cache else None
    converted = None
    if path is not None and path.is_file():
        try:
            with _quiet_archive():
                converted = torch.export.load(path).module()
        except Exception:  # noqa: BLE001 - a damaged or outdated cache entry is rebuilt
            converted = None
    if converted is None:
        converted = _calibrate(model, clips)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with _quiet_archive():
                    torch.export.save(torch.export.export(converted, (clips[0],)), path)
            except Exception:  # noqa: BLE001 - caching is an optimisation: the model is still returned
                pass
    if not lower_graph:
        return converted
    with torch.no_grad():
        lowered = lower(converted, (clips[0],))
    _shift_in_int8(lowered)
    _plain_float_linears(lowered)
    if not compile:
        return lowered
    use_cache_folder()
    # Not `compile_model`: freezing would fold the prepacked int8 weights again, which fails.
    compiled = torch.compile(lowered, dynamic=False)
    try:
        with torch.inference_mode(), _quiet_compiler():
            compiled(clips[0])  # compiles now, where a failure can still be answered
    except Exception as error:  # noqa: BLE001 - a graph inductor cannot compile still runs lowered
        lowered.compile_failure = f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
        return lowered
    return compiled


MKL_LINEAR = "mkl._mkl_linear"  # the lowering calls the packet, not an overload


def _plain_float_linears(graph_module: torch.fx.GraphModule) -> int:
    """Run the linears left in fp32 (a temporal module's, `FULL_PRECISION`), which the lowering packs
    for MKL, on their plain weights: inductor fails to compile a graph holding MKL-packed weights
    unless it freezes the graph, which the int8 weights do not survive. Returns how many."""
    graph = graph_module.graph
    rewritten = 0
    for node in list(graph.nodes):
        if node.op == "call_function" and str(node.target).split(".default")[0] == MKL_LINEAR:
            x, _packed, weight, bias = node.args[:4]
            with graph.inserting_before(node):
                plain = graph.call_function(torch.ops.aten.linear.default, (x, weight, bias))
            node.replace_all_uses_with(plain)
            graph.erase_node(node)
            rewritten += 1
    if rewritten:
        graph.eliminate_dead_code()
        graph.lint()
        graph_module.recompile()
    return rewritten


@contextlib.contextmanager
def _quiet_compiler() -> Iterator[None]:
    """A compilation that fails logs its stack through torch's loggers as it unwinds; the caller says
    what failed in one line instead."""
    loggers = [logging.getLogger(name) for name in ("torch._dynamo", "torch._inductor", "torch._subclasses")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class FixedBatch(nn.Module):
    """A model exported for batches of exactly `batch` clips (a quantized one), called with any number:
    smaller batches are padded with zeros, larger ones split; only the real clips' logits come back."""

    def __init__(self, model: nn.Module, batch: int):
        super().__init__()
        self.model, self.batch = model, batch

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        outputs = []
        for start in range(0, len(clips), self.batch):
            part = clips[start : start + self.batch]
            real = len(part)
            if real < self.batch:
                part = torch.cat([part, part.new_zeros((self.batch - real, *part.shape[1:]))])
            outputs.append(self.model(part.contiguous())[:real])
        return torch.cat(outputs)

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        from vtempo.errors import UsageError, param

        raise UsageError(f"an int8 model gives logits only; use {param('dtype', 'fp32')} (or bf16) for features")
