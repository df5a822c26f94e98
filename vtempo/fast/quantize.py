"""int8 inference on x86 CPUs: post-training static quantization, `quantize(model, calibration_clips)`.

The flow is PyTorch's PT2E: export the prepared model's graph, let `X86InductorQuantizer` annotate it
(convolutions, linears and the ops around them: int8 activations per tensor, int8 weights per output
channel), run the calibration clips through it to observe activation ranges, convert, and compile it
with inductor's freezing, which lowers each quantize → conv → dequantize pattern to one oneDNN int8
convolution. The quantizer and the PT2E functions live in torchao (`torchao.quantization.pt2e`) since
torch dropped `torch.ao.quantization.quantizer`; torchao is an optional dependency needed only here.

What stays fp32: every op the quantizer does not annotate, so all the temporal modules' own arithmetic
(TSM's shift is a copy; TAM's and TEFE's temporal convs, TSI's attention, TCM's correlation and
soft-argmax are elementwise ops, matmuls and softmaxes); their 1×1/3×3 convs are quantized like the
backbone's. TCM's correlation feeds a soft-argmax with a temperature of 100, which int8 would wreck, and
it runs as a matmul (not annotated), so it stays fp32 by construction.

A quantized model is cached under `<vtempo home>/int8/`, keyed by the model's weights and the
calibration clips, so a second run with the same model and clips skips the calibration (it still
compiles, from inductor's cache when that holds the graph).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn

from vtempo.errors import VtempoError
from vtempo.fast.compile import _drop_cast_cache, compile_model


def _pt2e():
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as error:
        raise VtempoError(f"--dtype int8 needs the torchao package (pip install torchao): {error}") from None
    return x86, prepare_pt2e, convert_pt2e


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


def fingerprint(model: nn.Module, clips: list[torch.Tensor]) -> str:
    """A key for the model's weights and the calibration clips (their bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    for clip in clips:
        digest.update(str(tuple(clip.shape)).encode())
        digest.update(clip.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def cache_path(key: str) -> Path:
    from vtempo.weights.registry import home

    return home() / "int8" / f"{key}.pt2"


def quantize(model: nn.Module, calibration_clips: Iterable[torch.Tensor], *, cache: bool = True,
             compile: bool = True) -> nn.Module:
    """An int8 version of the prepared fp32 `model` (`vtempo.fast.prepare`, on the CPU), calibrated on
    `calibration_clips` (float (N, T, 3, S, S) tensors, preprocessed like the model's input, all of one
    shape: the quantized model runs that shape). Returns the compiled int8 model (`compile=False`: the
    converted graph module, for inspection; it runs, slowly, in Python's reference int8 kernels)."""
    clips = [clip.detach().cpu().float() for clip in calibration_clips]
    if not clips:
        raise VtempoError("int8 calibration needs at least one clip")
    if len({tuple(clip.shape) for clip in clips}) != 1:
        raise VtempoError("int8 calibration clips must all have one shape (the model is exported for it)")
    x86, prepare_pt2e, convert_pt2e = _pt2e()
    _drop_cast_cache(model)
    model = model.eval()
    path = cache_path(fingerprint(model, clips)) if cache else None
    converted = None
    if path is not None and path.is_file():
        try:
            converted = torch.export.load(path).module()
        except Exception:  # noqa: BLE001 - a damaged or outdated cache entry is rebuilt
            converted = None
    if converted is None:
        with torch.no_grad():
            exported = torch.export.export(model, (clips[0],)).module()
            _one_partition_per_call(exported)
            quantizer = x86.X86InductorQuantizer()
            quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
            observed = prepare_pt2e(exported, quantizer)
            for clip in clips:
                observed(clip)
            converted = convert_pt2e(observed)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.export.save(torch.export.export(converted, (clips[0],)), path)
            except Exception:  # noqa: BLE001 - caching is an optimisation: the model is still returned
                pass
    return compile_model(converted, torch.device("cpu")) if compile else converted
