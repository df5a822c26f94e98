"""Cost and speed of models, measured side by side: `profile_models(["tsn-r50", "tsm-r50"])`.

Per model: parameters; MACs per clip (counted, without the head, analytic extras, uncounted op types;
see `vtempo.bench.flops`); the paper's figure from the registry; and per dtype: latency (first call,
warm-up, median, p90), clips/s, frames/s and peak memory.

Fair comparison: all models are built and warmed first, then timed round-robin, one call of each
(model, dtype) per round, so a change in machine load during the run hits every model alike.

Peak memory is what one forward pass needs beyond the weights and the input:
- CUDA: `torch.cuda.max_memory_allocated()` during the call minus what was allocated before it.
- CPU: the rise of the process's peak resident memory (Linux `VmHWM`, reset through
  `/proc/self/clear_refs`) during the call, after freed heap pages are handed back to the OS with
  `malloc_trim`, so pages kept by earlier calls do not hide the need. It counts everything the call
  touches (activations, oneDNN reorder buffers, autocast's bf16 weight copies), in whole pages.
  Elsewhere (not Linux/glibc) it is not measured (None).
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from vtempo import limits
from vtempo.bench.flops import count_macs
from vtempo.bench.runtimes import check_runtimes, parity, runtime_model, scratch_folder
from vtempo.data.synth import CLASSES, render_clip
from vtempo.errors import UsageError, VtempoError, param
from vtempo.fast import prepare
from vtempo.fast.compile import compile_model
from vtempo.fast.cudagraph import GraphedModel
from vtempo.fast.quantize import quantize, require_torchao
from vtempo.inference.decoding import ViewPlan, decode_views
from vtempo.inference.recognizer import create_model, resolve
from vtempo.runtime import (
    CHANNELS_LAST,
    autocast,
    check_dtype,
    cpu_name,
    pick_device,
    set_threads,
    synchronize,
)
from vtempo.video.discovery import collect_videos
from vtempo.video.sampling import clip_indices
from vtempo.video.transforms import Preprocess, make_views
from vtempo.weights.registry import ModelEntry, Protocol, load_registry

PARITY = 1e-4  # another runtime's logits against eager PyTorch's, relative: the export's own bound
PAPER_SIZE = 224  # the input side the papers' GMACs are quoted at
DEFAULT_NAMES = ("tsn-r50", "tsm-r50", "tam-r50", "tcm-r50", "stc-r50", "stc-light-r50", "tefe-r50", "tsi-r50")


@dataclass(frozen=True)
class Settings:
    frames: int | None = None  # None: the registry entry's, else 8
    size: int | None = None  # None: the registry entry's input size, else 224
    batch: int = 1
    device: str = "auto"
    dtypes: tuple[str, ...] = ("fp32",)
    channels_last: bool | None = None  # None: runtime.CHANNELS_LAST
    threads: int | None = None  # None: torch's default
    compile: bool = False
    cuda_graphs: bool = False  # replay captured CUDA graphs (vtempo.fast.cudagraph): batch-1 GPU latency
    iters: int = 20
    warmup: int = 3
    calibrate: str | None = None  # int8: a folder of videos to calibrate on (None: synthetic clips)
    against: tuple[str, ...] = ()  # other runtimes timed beside vtempo's fp32 model (vtempo.bench.runtimes)

    def check(self) -> None:
        for dtype in self.dtypes:
            check_dtype(dtype, "dtypes")
        if not self.dtypes:
            raise UsageError(f"{param('dtypes')}: give at least one")
        if self.calibrate is not None and "int8" not in self.dtypes:
            raise UsageError(f"{param('calibrate')} goes with {param('dtypes', 'int8')}")
        if "int8" in self.dtypes and self.cuda_graphs:
            raise UsageError(f"{param('dtypes', 'int8')} runs on the CPU: drop {param('cuda_graphs')}")
        if self.against:
            check_runtimes(list(self.against))
            if "fp32" not in self.dtypes:
                raise UsageError(f"{param('against')} compares with vtempo's fp32 model: include "
                                 f"{param('dtypes', 'fp32')}")
        if self.cuda_graphs and self.compile:
            raise UsageError(f"{param('cuda_graphs')} and {param('compile')}: choose one (each is timed against eager "
                             f"on its own)")
        for name, value, least, bound in (
                ("frames", self.frames, 1, "MAX_FRAMES"), ("size", self.size, 16, "MAX_INPUT_SIZE"),
                ("batch", self.batch, 1, "MAX_BATCH"), ("iters", self.iters, 1, "MAX_ITERS"),
                ("warmup", self.warmup, 0, "MAX_ITERS"), ("threads", self.threads, 1, "MAX_THREADS")):
            if value is not None and value < least:
                raise UsageError(f"{param(name)} must be at least {least}, got {value}")
            limits.check_int(name, value, least, bound)


@dataclass
class Cost:
    """One clip's cost in G (1e9) units."""

    params: int
    gmacs: float  # conv + matmul MACs counted by FlopCounterMode, head included
    gmacs_without_head: float
    head_gmacs: float
    analytic_gmacs: dict[str, float]  # module class → MACs it reports the counter missed
    uncounted_gops: dict[str, float]  # op type → G element-ops of arithmetic no counter saw
    unusual_uncounted: list[str]  # those op types beyond a plain ResNet's BN/ReLU/add/pooling

    @property
    def complete_gmacs(self) -> float:
        return self.gmacs + sum(self.analytic_gmacs.values())


@dataclass
class Timing:
    dtype: str
    first_ms: float  # the first call (kernel selection, weight packing, compilation); a timed one if no warm-up
    warmup_ms: float  # all warm-up calls together (the first included)
    median_ms: float
    p90_ms: float
    clips_per_s: float
    frames_per_s: float
    peak_mib: float | None
    times_ms: list[float] = field(default_factory=list)


@dataclass
class Agreement:
    """Logits under reduced precision (autocast) against fp32 logits of the same model and clips."""

    dtype: str
    max_abs: float  # largest |logit - fp32 logit|
    relative: float  # max_abs / largest |fp32 logit|
    top1_same: float  # fraction of clips whose top-1 class is unchanged


@dataclass
class Int8Model:
    """The quantized model that `int8` timings ran: how it was calibrated and what its graph holds."""

    calibration: str  # "synthetic" (rendered clips) or the --calibrate folder
    calibration_clips: int
    int8_ops: int  # oneDNN int8 convolutions (and linears) in the lowered graph
    fp32_convs: int  # convolutions left in floating point (TCM's dynamics)
    compiled: bool


def logit_agreement(model: torch.nn.Module, clips: torch.Tensor, dtype: str = "bf16",
                    reduced_model: torch.nn.Module | None = None) -> Agreement:
    """Run `model` (prepared, on the clips' device) in fp32 and `reduced_model` (default: `model`
    itself) in `dtype`; compare the logits."""
    device = clips.device
    with torch.inference_mode():
        exact = model(clips).float()
        with autocast(device, dtype):
            reduced = (model if reduced_model is None else reduced_model)(clips).float()
    max_abs = float((reduced - exact).abs().max())
    scale = float(exact.abs().max())
    same = float((reduced.argmax(-1) == exact.argmax(-1)).float().mean())
    return Agreement(dtype, max_abs, max_abs / scale if scale else float("inf"), same)


@dataclass
class ModelProfile:
    name: str
    arch: str
    frames: int
    size: int
    batch: int
    num_classes: int
    cost: Cost | None = None
    paper_gmacs: float | None = None
    paper_entry: str | None = None  # the registry entry the paper figure comes from
    timings: dict[str, Timing] = field(default_factory=dict)
    # Reduced-precision logits vs fp32 on the (random) profiling clip, random weights: a sanity figure;
    # the top-1 check belongs on trained weights and real clips.
    agreement: dict[str, Agreement] = field(default_factory=dict)
    int8: Int8Model | None = None  # what the int8 timings ran
    against: dict[str, Timing] = field(default_factory=dict)  # other runtimes (fp32), timed in the same rounds
    against_parity: dict[str, float] = field(default_factory=dict)  # their logits vs vtempo's eager fp32, relative
    errors: list[str] = field(default_factory=list)

    @property
    def paper_diff(self) -> float | None:
        """Relative difference of our MACs (counted + analytic) from the paper's: +0.05 = 5 % more.

        Only at the papers' 224² input; at other sizes the figures do not compare."""
        if self.cost is None or not self.paper_gmacs or self.size != PAPER_SIZE:
            return None
        return self.cost.complete_gmacs / self.paper_gmacs - 1

    def to_dict(self) -> dict:
        data = asdict(self)
        data["paper_diff"] = self.paper_diff
        if self.cost is not None:
            data["cost"]["complete_gmacs"] = self.cost.complete_gmacs
        return data


def paper_figure(arch: str, entry: ModelEntry | None, frames: int,
                 entries: dict[str, ModelEntry]) -> tuple[float | None, str | None]:
    """The paper's GMACs for `frames` frames: the entry's own, else the first entry of that architecture
    and frame count. Papers quote them at 224² whatever size the entry is tested at (PAPER_SIZE)."""
    candidates = [entry] if entry is not None else list(entries.values())
    for candidate in candidates:
        if candidate.arch == arch and candidate.frames == frames and candidate.paper_gmacs:
            return candidate.paper_gmacs, candidate.name
    return None, None


def measure_cost(model: torch.nn.Module, frames: int, size: int) -> Cost:
    macs = count_macs(model, frames, size)
    giga = 1e9
    return Cost(
        params=sum(p.numel() for p in model.parameters()),
        gmacs=macs.total / giga,
        gmacs_without_head=macs.backbone / giga,
        head_gmacs=macs.head / giga,
        analytic_gmacs={name: value / giga for name, value in macs.analytic.items()},
        uncounted_gops={op: value / giga for op, value in macs.uncounted.items()},
        unusual_uncounted=list(macs.unusual_uncounted),
    )


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _status_bytes(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {key} in /proc/self/status")


def peak_memory_mib(run: Callable[[], object], device: torch.device) -> float | None:
    """Memory one call of `run` needs beyond what is allocated before it (see the module docstring)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return None
    try:
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")  # resets VmHWM to the current resident size
        before = _status_bytes("VmRSS")
        run()
        return max(0, _status_bytes("VmHWM") - before) / 2**20
    except OSError:
        return None


class _Runner:
    """One model ready to run: prepared, maybe compiled or replayed from CUDA graphs, with its input."""

    def __init__(self, model: torch.nn.Module, clip: torch.Tensor, device: torch.device) -> None:
        self.model, self.clip, self.device = model, clip, device

    def __call__(self, dtype: str) -> float:
        """One call; returns its wall time in ms."""
        start = time.perf_counter()
        with torch.inference_mode(), autocast(self.device, dtype):
            self.model(self.clip)
        synchronize(self.device)
        return (time.perf_counter() - start) * 1000


CALIBRATION_CLIPS = 4  # clips an int8 model is calibrated on: activation ranges, for speed figures


def calibration_batches(entry: ModelEntry | None, frames: int, size: int, batch: int,
                        folder: str | None = None) -> tuple[list[torch.Tensor], str]:
    """Batches of `batch` clips, preprocessed as `entry`'s model tests (default preprocessing without
    one), to calibrate an int8 model on: rendered synthetic clips, or those of the first videos in
    `folder` that decode. Returns them and where they came from."""
    preprocess = Preprocess.from_entry(entry, size)
    protocol = entry.protocol if entry is not None else Protocol()
    wanted = max(CALIBRATION_CLIPS, batch)
    clips: list[torch.Tensor] = []
    if folder is None:
        for index in range(wanted):
            video = render_clip(index % len(CLASSES), seed=[7, index], frames=max(frames, 16),
                                size=max(preprocess.resize))
            chosen = clip_indices(protocol, len(video.frames), frames, 1)[0]
            clips.append(make_views(np.asarray(video.frames)[list(chosen)], preprocess, 1))
        source = "synthetic"
    else:
        plan = ViewPlan(frames, protocol, 1, "centre", preprocess)
        for path in collect_videos([folder], recursive=True):
            views = decode_views(path, plan)["views"]
            if views is not None:
                clips.append(views)
            if len(clips) == wanted:
                break
        if not clips:
            raise UsageError(f"{param('calibrate', folder)}: no video there decodes; int8 needs a few to calibrate on")
        source = str(folder)
    joined = torch.cat(clips)
    joined = torch.cat([joined, joined[torch.arange(-len(joined) % batch) % len(joined)]])  # whole batches
    return list(joined.split(batch)), source


def _int8_ops(model: torch.nn.Module) -> tuple[int, int]:
    """(oneDNN int8 convolutions and linears, float convolutions) in a quantized model's graph."""
    graph = getattr(model, "_orig_mod", model).graph  # compiled: the lowered graph it compiles
    targets = [str(node.target) for node in graph.nodes if node.op == "call_function"]
    return (sum("onednn.qconv" in t or "onednn.qlinear" in t for t in targets),
            sum(t.startswith("aten.convolution") or "mkldnn._convolution" in t for t in targets))


def _quantized_runner(model: torch.nn.Module, entry, frames: int, size: int, settings: Settings,
                      clip: torch.Tensor) -> tuple[_Runner, Int8Model]:
    """`model` (prepared, fp32, on the CPU) quantized to int8 the way `classify --dtype int8` runs it."""

    batches, source = calibration_batches(entry, frames, size, settings.batch, settings.calibrate)
    quantized = quantize(copy.deepcopy(model), batches)
    int8_ops, fp32_convs = _int8_ops(quantized)
    if not int8_ops:
        raise VtempoError("the quantized graph holds no int8 convolution")
    info = Int8Model(source, sum(len(b) for b in batches), int8_ops, fp32_convs,
                     compiled=not hasattr(quantized, "compile_failure"))
    return _Runner(quantized, clip, clip.device), info


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def profile_models(
    names: Iterable[str],
    settings: Settings = Settings(),
    user_registry: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[ModelProfile]:
    """Profile every model in one run. A model that fails keeps its error in `errors`; others go on."""
    settings.check()
    names = list(names) or list(DEFAULT_NAMES)
    resolved = [(name, *resolve(name, user_registry)) for name in names]  # unknown names fail before any work
    entries = load_registry(user_registry)
    device = pick_device(settings.device)
    if settings.cuda_graphs and device.type != "cuda":
        raise UsageError(f"{param('cuda_graphs')} needs a CUDA device, and this run's is {device}")
    if "int8" in settings.dtypes:
        _check_int8(device)
    threads_before = torch.get_num_threads()
    set_threads(settings.threads)
    try:
        with torch.random.fork_rng(devices=[]), contextlib.ExitStack() as stack:  # seeded weights and clips
            torch.manual_seed(0)
            folder = None
            if settings.against:
                folder = Path(stack.enter_context(scratch_folder()))  # the exported files, removed after
            return _profile(resolved, entries, settings, device, user_registry, progress or (lambda message: None),
                            folder)
    finally:
        torch.set_num_threads(threads_before)  # a library call leaves the process as it found it


def _check_int8(device: torch.device) -> None:
    """int8 runs on the CPU with torchao's quantizer: refused in one line otherwise."""
    if device.type != "cpu":
        raise UsageError(f"{param('dtypes', 'int8')} runs on the CPU only, and this run's device is {device}: pass "
                         f"{param('device', 'cpu')}")
    try:
        require_torchao()
    except VtempoError as error:
        raise UsageError(str(error).split(" (")[0]) from None


def _profile(resolved, entries, settings: Settings, device: torch.device, user_registry, say,
             folder: Path | None = None) -> list[ModelProfile]:

    profiles: list[ModelProfile] = []
    runners: dict[str, _Runner] = {}
    quantized: dict[str, _Runner] = {}  # the int8 model of each name, when int8 is asked for
    others: dict[tuple[str, str], _Runner] = {}  # (name, runtime) → that runtime's model of it
    for name, arch, entry in resolved:
        frames = settings.frames or (entry.frames if entry else 8)
        size = settings.size or (entry.input_size if entry else 224)
        profile = ModelProfile(name, arch, frames, size, settings.batch, entry.num_classes if entry else 400)
        profile.paper_gmacs, profile.paper_entry = paper_figure(arch, entry, frames, entries)
        profiles.append(profile)
        say(f"building {name}")
        try:
            model = create_model(name, frames=frames, registry=user_registry)
        except Exception as error:  # noqa: BLE001 - e.g. a frame count the architecture does not allow
            profile.errors.append(f"build: {error}")
            continue
        try:
            profile.cost = measure_cost(model, frames, size)
        except Exception as error:  # noqa: BLE001 - a model the meta device cannot run still gets timed
            profile.errors.append(f"MACs: {type(error).__name__}: {error}")
        reference = copy.deepcopy(model) if settings.against else None  # prepare changes the model in place
        model = prepared = prepare(model, device, settings.channels_last)
        if settings.compile:
            model = compile_model(model, device)
        if settings.cuda_graphs:
            model = GraphedModel(model)
        clip = torch.randn(settings.batch, frames, 3, size, size, device=device)
        runners[name] = _Runner(model, clip, device)
        if "int8" in settings.dtypes:
            say(f"quantizing {name} to int8")
            try:
                quantized[name], profile.int8 = _quantized_runner(prepared, entry, frames, size, settings, clip)
            except Exception as error:  # noqa: BLE001 - the other dtypes and models are still timed
                message = str(error) if isinstance(error, VtempoError) else f"{type(error).__name__}: {error}"
                profile.errors.append(f"int8: {message}")

        if settings.against:
            with torch.inference_mode():
                expected = runners[name].model(clip).float()
        for runtime in settings.against:
            say(f"{name} in {runtime}")
            try:
                other = runtime_model(runtime, reference, prepared, clip, folder, name)
                error = parity(other, expected, clip)
                profile.against_parity[runtime] = error
                if error > PARITY:
                    raise VtempoError(f"its logits differ from eager PyTorch's by {error:.1e} (relative), "
                                      f"more than {PARITY:.0e}")
                others[name, runtime] = _Runner(other, clip, device)
            except Exception as error:  # noqa: BLE001 - vtempo's own timings and the other runtimes go on
                message = str(error) if isinstance(error, VtempoError) else f"{type(error).__name__}: {error}"
                profile.errors.append(f"{runtime}: {message}")

    def runner(name: str, key: str) -> _Runner:
        """The model timed for a dtype or, under the name of another runtime, that runtime's."""
        if key in settings.against:
            return others[name, key]
        return quantized[name] if key == "int8" else runners[name]

    def arm(name: str, key: str) -> Callable[[], float]:
        return lambda: runner(name, key)(key if key in settings.dtypes else "fp32")

    by_name = {profile.name: profile for profile in profiles}
    plan = [(name, dtype) for name in runners for dtype in settings.dtypes if dtype != "int8" or name in quantized]
    plan += [(name, runtime) for name in runners for runtime in settings.against if (name, runtime) in others]
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in plan}
    warmups: dict[tuple[str, str], list[float]] = {key: [] for key in plan}
    failed: set[str] = set()

    def attempt(name: str, step: str, action: Callable[[], object]) -> object:
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - one failing model must not end the others' run
            by_name[name].errors.append(f"{step}: {type(error).__name__}: {error}")
            failed.add(name)
            return None

    for name, dtype in plan:
        say(f"warming up {name} {dtype}")
        for _ in range(settings.warmup):
            if name in failed:
                break
            elapsed = attempt(name, f"{dtype} run", arm(name, dtype))
            if elapsed is not None:
                warmups[name, dtype].append(elapsed)
    for round_index in range(settings.iters):
        say(f"timing round {round_index + 1}/{settings.iters}")
        for name, dtype in plan:
            if name not in failed:
                elapsed = attempt(name, f"{dtype} run", arm(name, dtype))
                if elapsed is not None:
                    samples[name, dtype].append(elapsed)
    for name, dtype in plan:
        if name in failed:
            continue
        say(f"peak memory {name} {dtype}")
        peak = attempt(name, f"{dtype} memory", lambda: peak_memory_mib(arm(name, dtype), device))
        times = samples[name, dtype]
        median = statistics.median(times)
        clips_per_s = settings.batch / (median / 1000)
        other = dtype in settings.against
        (by_name[name].against if other else by_name[name].timings)[dtype] = Timing(
            dtype="fp32" if other else dtype,
            first_ms=(warmups[name, dtype] or times)[0],
            warmup_ms=sum(warmups[name, dtype]),
            median_ms=median,
            p90_ms=_percentile(times, 0.9),
            clips_per_s=clips_per_s,
            frames_per_s=clips_per_s * by_name[name].frames,
            peak_mib=peak,
            times_ms=times,
        )
        if dtype != "fp32" and "fp32" in settings.dtypes and not other:
            exact, reduced = runners[name], runner(name, dtype)
            agreement = attempt(name, f"{dtype} vs fp32",
                                lambda: logit_agreement(exact.model, exact.clip, dtype, reduced.model))
            if agreement is not None:
                by_name[name].agreement[dtype] = agreement
    return profiles


@dataclass
class Ratio:
    """A model against a reference model, same dtype: time and MACs as ratios, and their quotient."""

    reference: str
    dtype: str
    time_ratio: float  # median over rounds of time / the reference's time in the same round
    macs_ratio: float | None  # MACs (counted + analytic) / reference MACs

    @property
    def time_per_macs(self) -> float | None:
        """time_ratio / macs_ratio: ≤ 1.3 means no slower than its MACs allow (with a 30 % margin)."""
        return self.time_ratio / self.macs_ratio if self.macs_ratio else None


def relative_to(profiles: list[ModelProfile], reference: str) -> dict[tuple[str, str], Ratio]:
    """(model, dtype) → Ratio against `reference` (which must be among the profiles)."""
    by_name = {profile.name: profile for profile in profiles}
    if reference not in by_name:
        raise UsageError(f"{param('reference', reference)}: not among the profiled models ({', '.join(by_name)})")
    base = by_name[reference]
    ratios = {}
    for profile in profiles:
        for dtype, timing in profile.timings.items():
            if dtype not in base.timings:
                continue
            macs = None
            if profile.cost is not None and base.cost is not None and base.cost.complete_gmacs:
                macs = profile.cost.complete_gmacs / base.cost.complete_gmacs
            ratios[profile.name, dtype] = Ratio(reference, dtype, paired_ratio(timing, base.timings[dtype]), macs)
    return ratios


def paired_ratio(timing: Timing, base: Timing) -> float:
    """`timing`'s time over `base`'s: the median of the per-round ratios, since the rounds time every
    model in turn and a change of machine load hits both calls of a round alike (the ratio of the
    medians where the rounds do not pair up)."""
    if timing.times_ms and len(timing.times_ms) == len(base.times_ms):
        return statistics.median(time / base_time for time, base_time in zip(timing.times_ms, base.times_ms))
    return timing.median_ms / base.median_ms


def speedup(profile: ModelProfile, fast: str = "bf16", slow: str = "fp32") -> float | None:
    """How many times more clips/s `fast` gives than `slow` (None unless both were measured)."""
    if fast in profile.timings and slow in profile.timings:
        return profile.timings[slow].median_ms / profile.timings[fast].median_ms
    return None


def environment(settings: Settings) -> dict:
    """What the numbers depend on, for the JSON report."""
    device = pick_device(settings.device)
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": cpu_name(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": settings.threads or torch.get_num_threads(),
        "channels_last": CHANNELS_LAST if settings.channels_last is None else settings.channels_last,
        "compile": settings.compile,
    }


__all__ = ["Cost", "DEFAULT_NAMES", "Int8Model", "calibration_batches", "ModelProfile", "Ratio", "Settings", "Timing", "environment", "logit_agreement",
           "measure_cost", "paper_figure", "peak_memory_mib", "profile_models", "relative_to", "speedup"]
