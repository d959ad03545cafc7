"""Weight files: key conversion (pure, :mod:`.convert`), reading and writing (:mod:`.io`), hub (:mod:`.hub`)."""

from .convert import ConversionError, convert_state_dict, detect_format, to_native
from .io import (
    LoadedWeights,
    LoadReport,
    WeightsError,
    infer_config,
    load_state_dict,
    read_weights,
    save_hf,
    save_native,
    save_official,
)

__all__ = [
    "ConversionError",
    "LoadReport",
    "LoadedWeights",
    "WeightsError",
    "convert_state_dict",
    "detect_format",
    "infer_config",
    "load_state_dict",
    "read_weights",
    "save_hf",
    "save_native",
    "save_official",
    "to_native",
]
