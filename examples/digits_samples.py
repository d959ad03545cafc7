"""Save a few held-out digits as PNG files, for ``cvt predict`` to classify after ``cvt train``.

Run: ``python examples/digits_samples.py OUT_DIR [N]``. The images come from the same fixed held-out split
that ``cvt train`` validates on (never trained on); each file is named by its true class,
``<index>-true<label>.png``, and holds the original 8x8 grey levels.
"""

import sys
from pathlib import Path

from cvt.data.sources import digit_image, digits_split

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/digits/samples")
n = int(sys.argv[2]) if len(sys.argv) > 2 else 8
out.mkdir(parents=True, exist_ok=True)
_, held_out = digits_split()
for i in range(0, len(held_out), len(held_out) // n)[:n]:
    path = out / f"{i:03d}-true{held_out.targets[i]}.png"
    digit_image(held_out.images[i]).save(path)
print(f"wrote {n} held-out digits to {out}/")
