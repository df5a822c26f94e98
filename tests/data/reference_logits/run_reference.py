"""How the reference logits in this folder were made (run by hand, outside the test suite).

    python run_reference.py CASE OUT.pt REPO_DIR

CASE is tsn-r50 | tsm-r50 | tam-r50 | tcm-r50; REPO_DIR a checkout of the official code at the commit
below (mit-han-lab/temporal-shift-module for TSN and TSM, liu-zhy/temporal-adaptive-module for TAM,
zphyix/TCM for TCM, which also needs the `spatial_correlation_sampler` extension importable; it was
built CPU-only from its PyPI sdist 0.5.0 with -std=c++20 and the CUDA header include guarded).
Shims that leave the math alone, applied to a copy of the checkout: TCM's `.to('cuda')` calls
removed; an importable stub `ipdb`; the TAM repo's legacy autograd `SegmentConsensus` replaced by the
TSM repo's nn.Module one (both take the mean over segments). In this script: torchvision's resnet50
built without downloaded weights, `model_zoo.load_url` returning no weights (nothing is downloaded).

The weights come from tests/test_fidelity.py's `fidelity_weights` (seeded), copied into the reference
model through vtempo's key mapping of the official layout (`vtempo.checkpoint.key_map`), so a mapping
error would also show up as a logits mismatch.
"""
import sys
from pathlib import Path

import torch
import torch.utils.model_zoo
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/
from test_fidelity import fidelity_input, fidelity_weights, weights_checksum  # noqa: E402

from vtempo.checkpoint import key_map  # noqa: E402
from vtempo.models import build  # noqa: E402

CASES = {  # classes, frames, input shape, reference repository @ commit
    "tsn-r50": (400, 8, (2, 8, 3, 64, 64), "mit-han-lab/temporal-shift-module@1f6a834b0212"),
    "tsm-r50": (400, 8, (2, 8, 3, 64, 64), "mit-han-lab/temporal-shift-module@1f6a834b0212"),
    "tam-r50": (174, 8, (2, 8, 3, 64, 64), "liu-zhy/temporal-adaptive-module@5fcb46fe671e"),
    "tcm-r50": (174, 8, (2, 8, 3, 80, 80), "zphyix/TCM@34685f7c8691"),
}
SEED = 1234

case, out, repo_dir = sys.argv[1], sys.argv[2], sys.argv[3]
classes, frames, shape, reference_name = CASES[case]
sys.path.insert(0, repo_dir)
_resnet50 = torchvision.models.resnet50
torchvision.models.resnet50 = lambda *args, **kwargs: _resnet50(weights=None)
torch.utils.model_zoo.load_url = lambda *args, **kwargs: {}

if case == "tcm-r50":
    from models import TSN  # zphyix/TCM

    reference = TSN(classes, frames, "RGB", base_model="TCM_resnet50", consensus_type="avg", dropout=0.8)
else:
    from ops.models import TSN

    options = {"tsn-r50": dict(pretrain=None, is_shift=False),
               "tsm-r50": dict(pretrain=None, is_shift=True, shift_div=8, shift_place="blockres"),
               "tam-r50": dict(tam=True)}[case]
    reference = TSN(classes, frames, "RGB", base_model="resnet50", consensus_type="avg", dropout=0.5, **options)
reference.eval()

model = build(case, num_classes=classes, frames=frames).eval()
fidelity_weights(model, SEED)
ours = model.state_dict()
theirs = reference.state_dict()
mapping = key_map(list(ours), list(theirs), "official")
assert None not in mapping.values() and sorted(mapping.values()) == sorted(ours)
reference.load_state_dict({k: ours[mapping[k]].reshape(v.shape).clone() for k, v in theirs.items()})

clip = fidelity_input(shape, SEED + 1)
extra = {}
if case == "tcm-r50":
    reference.base_model.tcm_layer.mtdm.register_forward_hook(lambda m, i, o: extra.update(motion=o.detach().clone()))
with torch.no_grad():
    flat = clip.reshape(shape[0], -1, *shape[-2:])
    logits = reference(flat, 100) if case == "tcm-r50" else reference(flat)
    error = ((model(clip) - logits).abs().max() / logits.abs().max()).item()
print(f"{case}: logits {tuple(logits.shape)}, max |logit| {logits.abs().max():.4f}, vtempo relative error {error:.2e}")
torch.save({
    "arch": case, "num_classes": classes, "frames": frames, "input_shape": list(shape),
    "weights_seed": SEED, "input_seed": SEED + 1,
    "weights_checksum": weights_checksum(model), "input_checksum": float(clip.double().abs().sum()),
    "logits": logits.detach().clone(), "reference": reference_name, "torch": str(torch.__version__), **extra,
}, out)
