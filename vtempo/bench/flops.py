"""Multiply-accumulates per clip, counted with torch's FlopCounterMode on the meta device.

FlopCounterMode counts matmul/conv/SDPA and reports 2 × MACs; papers' "GFLOPs" are MACs, so we halve.
Running on `meta` tensors costs no compute, so even R-101 at 16 frames counts in about a second.

Everything else the forward pass computes counts zero in FlopCounterMode (and in every other counter):
BN, ReLU, residual adds, pooling, and also the work some temporal modules are made of (sigmoid gates,
softmax kernels, a correlation built from unfold · multiply · sum). `count_macs` therefore also
records, by op type, every arithmetic aten op the forward executed that the counter did not count,
with a rough size (one operation per element of its largest tensor) so a reader sees what the MACs
figure leaves out.

A module that knows the MACs of such work can say so: give it a method

    def uncounted_macs(self, input_shape: torch.Size) -> float

returning the multiply-accumulates one call on an input of that shape (its first tensor argument, the
whole (N·T, C, H, W) batch; `self.frames` is already set) performs in ops the counter cannot see.
`count_macs` calls it during the meta forward and reports the sum per module class in `analytic`
(e.g. TANet's temporal convolution, elementwise in vtempo: 0.033 GMACs for R-50, 8 frames, 224²).
Only report work done by uncounted ops; MACs of a conv, linear, matmul, bmm or einsum are counted
already and would be counted twice.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

# Ops that only allocate, copy or rearrange memory: no arithmetic, so not worth reporting.
_MOVEMENT = frozenset(
    """empty empty_like empty_strided zeros zeros_like ones ones_like full full_like new_zeros new_empty
    new_empty_strided new_full new_ones scalar_tensor arange linspace fill zero copy clone to_copy cat
    stack constant_pad_nd pad reflection_pad1d reflection_pad2d replication_pad1d replication_pad2d
    index index_select gather scatter index_put slice_scatter select_scatter diagonal_scatter roll flip
    repeat im2col col2im unsafe_view contiguous lift_fresh lift_fresh_copy expand_copy unfold_copy
    detach alias split split_with_sizes unsafe_split chunk unbind local_scalar_dense item resize
    set as_strided_scatter""".split()
)

# aten names → the op type a reader knows.
_ALIASES = {
    "native_batch_norm": "batch_norm",
    "native_batch_norm_legit": "batch_norm",
    "native_batch_norm_legit_no_training": "batch_norm",
    "native_layer_norm": "layer_norm",
    "native_group_norm": "group_norm",
    "safe_softmax": "softmax",
    "max_pool2d_with_indices": "max_pool2d",
    "max_pool3d_with_indices": "max_pool3d",
    "adaptive_max_pool2d": "adaptive_max_pool2d",
    "linalg_vector_norm": "norm",
}

# What a plain ResNet (TSN) runs besides convs and the head: every paper leaves these out of its GMACs.
RESNET_UNCOUNTED = frozenset({"batch_norm", "relu", "add", "max_pool2d", "adaptive_avg_pool2d", "mean"})


def op_type(func: torch._ops.OpOverload) -> str:
    """`aten._native_batch_norm_legit_no_training.default` → `batch_norm`; `aten.relu_` → `relu`."""
    name = func._overloadpacket.__name__.strip("_")
    return _ALIASES.get(name, name)


@dataclass(frozen=True)
class MacCount:
    """The cost of one clip. MACs and element-ops are plain counts (divide by 1e9 for G)."""

    total: float  # conv + matmul MACs counted by FlopCounterMode, head included
    head: float  # the classifier's MACs (T × features × classes)
    analytic: dict[str, float] = field(default_factory=dict)  # module class → MACs it reports the counter missed
    uncounted: dict[str, float] = field(default_factory=dict)  # op type → element-ops no counter saw

    @property
    def backbone(self) -> float:
        """Counted MACs without the head."""
        return self.total - self.head

    @property
    def analytic_total(self) -> float:
        return sum(self.analytic.values())

    @property
    def complete(self) -> float:
        """Counted MACs plus the analytic figures modules add for work the counter cannot see."""
        return self.total + self.analytic_total

    @property
    def unusual_uncounted(self) -> dict[str, float]:
        """Uncounted op types beyond those of a plain ResNet (BN, ReLU, residual add, pooling)."""
        return {op: n for op, n in self.uncounted.items() if op not in RESNET_UNCOUNTED}


class _UncountedOps(TorchDispatchMode):
    """Sees every aten op the forward finally executes (below FlopCounterMode's decompositions)."""

    def __init__(self, counted: dict) -> None:
        super().__init__()
        self.counted = counted
        self.element_ops: dict[str, float] = defaultdict(float)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not isinstance(func, torch._ops.OpOverload) or func._overloadpacket in self.counted or func.is_view:
            return out
        name = op_type(func)
        if name in _MOVEMENT:
            return out
        tensors = [t for t in (*args, *(kwargs or {}).values(), *(out if isinstance(out, (tuple, list)) else (out,)))
                   if isinstance(t, torch.Tensor)]
        if tensors:
            self.element_ops[name] += max(t.numel() for t in tensors)
        return out


def _attach_analytic_hooks(model: torch.nn.Module, totals: dict[str, float]) -> list:
    def record(module, args):
        shape = next((a.shape for a in args if isinstance(a, torch.Tensor)), None)
        if shape is not None:
            totals[type(module).__name__] += float(module.uncounted_macs(shape))

    reporting = [m for m in model.modules() if callable(getattr(m, "uncounted_macs", None))]
    return [module.register_forward_pre_hook(record) for module in reporting]


def count_macs(model: torch.nn.Module, frames: int = 8, size: int = 224) -> MacCount:
    """MACs for one clip of `frames` frames at `size`², counted on a meta-device copy of `model`."""
    meta_model = copy.deepcopy(model).to("meta").eval()
    clip = torch.empty(1, frames, 3, size, size, device="meta")
    analytic: dict[str, float] = defaultdict(float)
    hooks = _attach_analytic_hooks(meta_model, analytic)
    counter = FlopCounterMode(display=False)
    # The recorder is entered first so it sits below the counter and sees the ops it finally runs.
    recorder = _UncountedOps(counter.flop_registry)
    try:
        with recorder, counter, torch.no_grad():
            meta_model(clip)
    finally:
        for hook in hooks:
            hook.remove()
    per_module = counter.get_flop_counts()
    total = sum(per_module.get("Global", {}).values()) / 2
    head_key = f"{type(model).__name__}.fc"
    head = sum(per_module.get(head_key, {}).values()) / 2
    uncounted = dict(sorted(recorder.element_ops.items(), key=lambda item: -item[1]))
    return MacCount(total=total, head=head, analytic=dict(analytic), uncounted=uncounted)
