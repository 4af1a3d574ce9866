"""tailedcore: anomaly detection on noisy, long-tailed, multi-class image sets.

    from tailedcore import TailedCore, load
    model = TailedCore().fit("path/to/mvtec_root")   # all train/good merged
    predictions = model.predict(["image.png"])
    model.save("model.safetensors"); model = load("model.safetensors")
"""

import os

# Idle OpenMP threads sleep instead of spinning (set before torch loads its OpenMP runtime; a value the
# user set is kept). On a machine whose other work holds a core, spinning threads wait on each other:
# a 55-image fit on 2 threads took 528 s spinning, 313 s sleeping (1 thread: 281 s); on an idle
# machine sleeping costs 9% (195 s against 179 s). docs/reliability.md, "threads".
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .detector import Detector
from .methods import METHODS, PatchCore, SoftPatch, TailedCore, load
from .predictions import Predictions

__all__ = ["METHODS", "Detector", "PatchCore", "Predictions", "SoftPatch", "TailedCore", "load"]
__version__ = "0.1.0"
