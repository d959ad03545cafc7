"""Weight files for the PyTorch model: reading and writing (:mod:`.io`), the hub download (:mod:`.hub`).

The key-conversion rules themselves are framework-free: :mod:`cvt.core.keys`.
"""

from ..core.errors import ConversionError, WeightsError
from .io import LoadedWeights, LoadReport, load_state_dict, read_weights, save_hf, save_native, save_official

__all__ = [
    "ConversionError",
    "LoadReport",
    "LoadedWeights",
    "WeightsError",
    "load_state_dict",
    "read_weights",
    "save_hf",
    "save_native",
    "save_official",
]
