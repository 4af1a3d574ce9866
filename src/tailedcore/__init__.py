"""tailedcore: anomaly detection on noisy, long-tailed, multi-class image sets.

    from tailedcore import TailedCore, load
    model = TailedCore().fit("path/to/mvtec_root")   # all train/good merged
    predictions = model.predict(["image.png"])
    model.save("model.safetensors"); model = load("model.safetensors")
"""

from .detector import METHODS, Detector, PatchCore, SoftPatch, TailedCore, load
from .predictions import Predictions

__all__ = ["METHODS", "Detector", "PatchCore", "Predictions", "SoftPatch", "TailedCore", "load"]
__version__ = "0.1.0"
