"""Downloading released checkpoints from the Hugging Face hub.

``huggingface_hub`` is imported only when a download is asked for: importing :mod:`cvt` never touches the network.
Framework-free: every front-end downloads through it. The settings are read at call time (not at import, as
``huggingface_hub`` does): ``HF_ENDPOINT`` (a mirror), ``HF_HUB_CACHE`` (the cache directory) and
``HF_HUB_OFFLINE=1`` (cache only).

Order: the cache first (no network at all when the file is there), then, unless offline, a quick TCP reachability
check of the endpoint (so that a machine without network fails in about a second instead of ``huggingface_hub``'s ~25
s of retries), then the download with its progress bar on stderr.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from .errors import WeightsError, first_line
from .presets import Checkpoint

# Preferred first: safetensors needs no unpickling at all.
CANDIDATE_FILES = ("model.safetensors", "pytorch_model.bin")
DEFAULT_ENDPOINT = "https://huggingface.co"
CONNECT_TIMEOUT_S = 3.0
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def offline_help(ckpt: Checkpoint) -> str:
    """What to pass instead of a download (the tail of every download error)."""
    return (
        "use a local copy instead (weights= in Python, --weights on the command line): "
        f"the official {ckpt.official_file} "
        f"(microsoft/CvT model zoo), an HF directory with config.json + model.safetensors or pytorch_model.bin "
        f"(a copy of {ckpt.hf_repo}), or a cvt-torch .safetensors file"
    )


def resolve_endpoint(endpoint: str | None = None) -> str:
    """``endpoint``, else ``$HF_ENDPOINT`` now, else the hub."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def check_reachable(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """``None`` if a TCP connection to the endpoint's host opens within ``timeout``, else the reason.

    Skipped (``None``) when a proxy is configured: the proxy, not the host, must then be reachable.
    """
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return None
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as e:
        return f"cannot resolve {host} ({e.strerror or e})"
    except OSError as e:
        return f"cannot connect to {host}:{port} ({e.strerror or type(e).__name__})"


def cached_checkpoint(ckpt: Checkpoint, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The weight file of ``ckpt`` if it is already in the hub cache (no network)."""
    import huggingface_hub as hub

    for name in CANDIDATE_FILES:
        hit = hub.try_to_load_from_cache(ckpt.hf_repo, name, cache_dir=_cache_dir(cache_dir))
        if isinstance(hit, str):  # (None: unknown; a sentinel object: known not to exist)
            return Path(hit)
    return None


def _cache_dir(cache_dir: str | os.PathLike[str] | None) -> str | None:
    value = cache_dir or os.environ.get("HF_HUB_CACHE")
    return str(value) if value else None


def download_checkpoint(
    ckpt: Checkpoint,
    cache_dir: str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
    offline: bool | None = None,
) -> Path:
    """Fetch ``ckpt`` into the huggingface_hub cache (progress bar on stderr) and return the weight file.

    Tries ``model.safetensors``, then ``pytorch_model.bin``. ``offline=None`` reads ``HF_HUB_OFFLINE``.
    Raises :class:`WeightsError` (naming the checkpoint, the reason and the local alternatives) when the
    file is not cached and cannot be downloaded.
    """
    try:
        import huggingface_hub as hub
        from huggingface_hub import constants as hub_constants
        from huggingface_hub import errors as hub_errors
    except ImportError:  # pragma: no cover - it is a dependency, but keep the message clear
        raise WeightsError(f"{ckpt.name}: downloading needs huggingface_hub (pip install huggingface_hub)") from None

    hit = cached_checkpoint(ckpt, cache_dir)
    if hit is not None:
        return hit
    if offline is None:  # the variable now if set, else what huggingface_hub read at its import
        env = os.environ.get("HF_HUB_OFFLINE")
        offline = _truthy(env) if env is not None else bool(getattr(hub_constants, "HF_HUB_OFFLINE", False))
    if offline:
        raise WeightsError(
            f"{ckpt.name}: not in the Hugging Face cache and offline mode is on (HF_HUB_OFFLINE); {offline_help(ckpt)}"
        )
    endpoint = resolve_endpoint(endpoint)
    problem = check_reachable(endpoint)
    if problem is not None:
        raise WeightsError(f"{ckpt.name}: cannot download {ckpt.hf_repo}: no network ({problem}); {offline_help(ckpt)}")
    reasons = []
    for name in CANDIDATE_FILES:
        try:
            path = hub.hf_hub_download(ckpt.hf_repo, name, cache_dir=_cache_dir(cache_dir), endpoint=endpoint)
            return Path(path)
        except hub_errors.RemoteEntryNotFoundError:
            reasons.append(f"{name} not found")
            continue  # try the next file name
        except (hub_errors.RepositoryNotFoundError, hub_errors.GatedRepoError) as e:
            reasons.append(f"repository not accessible ({first_line(e)})")
            break
        except (OSError, hub_errors.HfHubHTTPError, ValueError) as e:
            cause = e.__cause__ or e
            reasons.append(first_line(cause))
            break
    raise WeightsError(
        f"{ckpt.name}: could not download {ckpt.hf_repo} from {endpoint} ({'; '.join(reasons)}); {offline_help(ckpt)}"
    )
