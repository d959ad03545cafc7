"""Quick start: build CvT-13, count its cost, run images through it, take the multi-scale features.

Run: ``python examples/quickstart.py`` (no download; random weights unless you pass a weight file:
``python examples/quickstart.py CvT-13-224x224-IN-1k.pth``).
"""

import sys
import time

import torch

import cvt

weights = sys.argv[1] if len(sys.argv) > 1 else None
model = cvt.create_model("cvt-13", weights=weights).eval()
cfg = model.config
print(
    f"{cfg.name}: {cvt.count_parameters(model):,} parameters, "
    f"{cvt.count_macs(cfg, 224) / 1e9:.2f} GMACs at 224 (attention matmuls included)"
)

torch.manual_seed(0)
x = torch.randn(4, 3, 224, 224)
with torch.inference_mode():
    t0 = time.perf_counter()
    logits = model(x)
    dt = time.perf_counter() - t0
    feats = model.forward_intermediates(x, intermediates_only=True)
    wide = model(torch.randn(1, 3, 184, 750))  # any H, W works: there is no positional embedding
print(
    f"logits {tuple(logits.shape)} in {dt * 1000:.0f} ms "
    f"({x.shape[0] / dt:.1f} img/s on {torch.get_num_threads()} threads)"
)
print("feature maps (strides 4/8/16):", [tuple(f.shape) for f in feats])
print("non-square 184x750 input ->", tuple(wide.shape))
top = logits.softmax(-1)[0].topk(3)
print("top-3 of image 0 (random weights, so meaningless):", [(int(i), round(float(p), 4)) for p, i in zip(*top)])
