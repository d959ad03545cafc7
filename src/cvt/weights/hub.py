"""Downloading released checkpoints from the Hugging Face hub (huggingface_hub is imported lazily)."""

from __future__ import annotations

import os
from pathlib import Path

from ..registry import Checkpoint
from .io import WeightsError

# Preferred first: safetensors needs no unpickling at all.
_CANDIDATES = ("model.safetensors", "pytorch_model.bin")


def download_checkpoint(ckpt: Checkpoint, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Fetch ``ckpt`` into the huggingface_hub cache (progress bar on stderr) and return the weight file.

    A file already in the cache is used without touching the network. Offline (or with ``HF_HUB_OFFLINE=1``)
    and not cached, raises :class:`WeightsError` saying which local files ``weights=`` accepts instead.
    """
    try:
        import huggingface_hub as hub
    except ImportError:  # pragma: no cover - it is a dependency, but keep the message clear
        raise WeightsError(f"{ckpt.name}: downloading needs huggingface_hub (pip install huggingface_hub)") from None

    for name in _CANDIDATES:  # the cache first: no network at all when it is there
        hit = hub.try_to_load_from_cache(ckpt.hf_repo, name, cache_dir=cache_dir)
        if isinstance(hit, str):
            return Path(hit)
    errors = []
    for name in _CANDIDATES:
        try:
            return Path(hub.hf_hub_download(ckpt.hf_repo, name, cache_dir=cache_dir))
        except hub.errors.EntryNotFoundError as e:
            errors.append(str(e).splitlines()[0])
            continue
        except (hub.errors.LocalEntryNotFoundError, OSError, hub.errors.HfHubHTTPError) as e:
            errors.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
            break
    raise WeightsError(
        f"{ckpt.name}: could not download {ckpt.hf_repo} from the Hugging Face hub ({errors[-1] if errors else ''}). "
        f"Offline, pass weights= a local file instead: the official {ckpt.official_file}, an HF directory "
        f"(config.json + model.safetensors or pytorch_model.bin), or a cvt-torch .safetensors"
    )
