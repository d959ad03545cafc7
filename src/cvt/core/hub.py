"""Downloading from the Hugging Face hub: released checkpoints, and any repository named by a hub id.

Hub ids (:func:`parse_hub_id`): ``hf://owner/repo[@revision]`` (weights) and timm's ``hf-hub:owner/repo[@revision]``
(a model name); the revision is a branch, tag or commit. :func:`download_repo` fetches the side files we read and one
set of weights (our native layout, a transformers CvT directory, a Keras preset, or a single ``.safetensors``) and
returns the snapshot to read like a local directory, with its commit.

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
import re
import socket
from dataclasses import dataclass
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


# ---------------------------------------------------------------------------- any repository, by hub id
# A user's repository: hf://owner/repo[@revision] (weights) or timm's hf-hub:owner/repo[@revision] (a model name).
# Parsing is plain string work (no huggingface_hub import), so every name can be checked for free.
HUB_PREFIXES = ("hf://", "hf-hub:", "hf_hub:")  # timm accepts hf_hub: too
_REPO_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")  # huggingface_hub's rule, without its import
_OWNER_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".h5", ".keras", ".ckpt", ".tar", ".onnx", ".json")
# What a repository may hold that we read: our native layout / transformers' CvT / a Keras preset (cvt.keras).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")  # read_raw's order
KERAS_PRESET_WEIGHTS = ("model.weights.h5", "task.weights.h5")
SIDE_FILES = ("config.json", "preprocessor_config.json", "metadata.json", "task.json", "preprocessor.json")


@dataclass(frozen=True)
class HubId:
    """A hub repository as a user named it: ``repo_id`` (``owner/repo``), ``revision`` (a branch, tag or commit;
    ``None``: the default branch) and ``text``, the user's spelling, which every error repeats."""

    repo_id: str
    revision: str | None
    text: str

    def at(self, commit: str) -> str:
        """``hf://owner/repo@<commit>``: what ``spec.source`` records for weights read from ``commit``."""
        return f"hf://{self.repo_id}@{commit}"

    @property
    def released(self) -> Checkpoint | None:
        """The released checkpoint whose ``hf_repo`` this is (``hf-hub:microsoft/cvt-13`` is ``cvt-13``), else None."""
        from .presets import CHECKPOINTS

        return next((c for c in CHECKPOINTS.values() if c.hf_repo.lower() == self.repo_id.lower()), None)


def parse_hub_id(value: object) -> HubId | None:
    """The :class:`HubId` of ``hf://owner/repo[@rev]`` / ``hf-hub:owner/repo[@rev]``; ``None`` for anything else.

    A ``pathlib.Path`` made from a hub id has lost a slash (``hf:/owner/repo``); it is read back as ``hf://``.
    Raises :class:`WeightsError` for a hub prefix followed by something that is no repository id.
    """
    if isinstance(value, str):
        text = value
    elif isinstance(value, os.PathLike):
        text = os.fspath(value)
        text = "hf://" + text[4:] if text.startswith("hf:/") and not text.startswith("hf://") else text
    else:
        return None
    prefix = next((p for p in HUB_PREFIXES if text.lower().startswith(p)), None)
    if prefix is None:
        return None
    repo, sep, revision = text[len(prefix) :].partition("@")
    if not _REPO_ID.fullmatch(repo) or "--" in repo or ".." in repo or (sep and not revision):
        raise WeightsError(
            f"{text}: not a hub id; write hf://owner/repo or hf://owner/repo@revision (a branch, tag or commit)"
        )
    return HubId(repo, revision or None, text)


def is_hub_id(value: object) -> bool:
    """True for ``hf://...`` / ``hf-hub:...``, well formed or not (:func:`parse_hub_id` says what is wrong)."""
    try:
        return parse_hub_id(value) is not None
    except WeightsError:
        return True


def hub_hint(value: object) -> str | None:
    """For a bare ``owner/repo`` that is no local path: how to write it as a hub id (the tail of the refusal)."""
    text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else ""
    if not isinstance(text, str) or not _OWNER_REPO.fullmatch(text) or text.lower().endswith(_WEIGHT_SUFFIXES):
        return None
    if Path(text).exists():
        return None
    return f"a Hugging Face hub repo is written hf-hub:{text} (as a model name) or hf://{text} (as weights)"


def choose_files(names: list[str], hub_id: HubId) -> list[str]:
    """Of a repository's files, the ones to download: the side files we read and ONE set of weights (the first of
    ``WEIGHT_FILES``, else a Keras preset's ``.weights.h5``, else a single ``.safetensors``).

    Raises :class:`WeightsError` naming the repository (and what it holds) when it holds no CvT weights.
    """
    top = [n for n in names if "/" not in n]
    side = [n for n in SIDE_FILES if n in top]
    weights = next(([n] for n in WEIGHT_FILES if n in top), None)
    if weights is None and KERAS_PRESET_WEIGHTS[0] in top:
        weights = [n for n in KERAS_PRESET_WEIGHTS if n in top]
    if weights is None:
        single = [n for n in top if n.endswith(".safetensors")]
        if len(single) == 1:
            weights = single
        else:
            held = ", ".join(sorted(top)[:8]) + (", ..." if len(top) > 8 else "") if top else "no files"
            what = f"{len(single)} .safetensors files (name one: download it and pass the file)" if single else held
            raise WeightsError(
                f"{hub_id.text}: holds no CvT weights we read (none of {', '.join(WEIGHT_FILES)}, "
                f"{KERAS_PRESET_WEIGHTS[0]} or a single .safetensors); it holds {what}"
            )
    return side + weights


def weights_in(folder: Path, hub_id: HubId) -> Path:
    """What to read in a downloaded snapshot: the directory (native / transformers / Keras preset layout), or its
    single ``.safetensors`` file when it has none of the directory layouts' weight files."""
    if any((folder / n).is_file() for n in (*WEIGHT_FILES, KERAS_PRESET_WEIGHTS[0])):
        return folder
    return folder / choose_files(sorted(p.name for p in folder.iterdir()), hub_id)[-1]


def _offline_now() -> bool:
    """``HF_HUB_OFFLINE`` now if set, else what huggingface_hub read at its import."""
    from huggingface_hub import constants as hub_constants

    env = os.environ.get("HF_HUB_OFFLINE")
    return _truthy(env) if env is not None else bool(getattr(hub_constants, "HF_HUB_OFFLINE", False))


def _network_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub's HTTP calls raise: its HTTP errors are ``OSError``s; its HTTP client's are not."""
    errors: list[type[BaseException]] = [OSError, ValueError]
    for module in ("httpx2", "httpx"):  # huggingface_hub 2.x's client, then 1.x's
        try:
            errors.append(__import__(module).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _revision_label(hub_id: HubId) -> str:
    return f"revision {hub_id.revision!r} of {hub_id.repo_id}" if hub_id.revision else hub_id.repo_id


def cached_snapshot(hub_id: HubId, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The cached snapshot folder of ``hub_id`` (no network), or ``None``.

    huggingface_hub resolves the revision (``refs/<branch>`` or a commit) in the cache; when it cached the repo's
    file listing (a :func:`download_repo` did), the folder must hold the files :func:`choose_files` picks.
    """
    import huggingface_hub as hub
    from huggingface_hub import errors as hub_errors

    cache = _cache_dir(cache_dir)
    wanted = None
    try:
        tree = hub.get_cached_repo_tree(hub_id.repo_id, revision=hub_id.revision, cache_dir=cache)
        wanted = choose_files([f.path for f in tree], hub_id)
    except (hub_errors.CachedRepoTreeNotFoundError, AttributeError):  # (no listing cached; older huggingface_hub)
        pass
    try:
        folder = hub.snapshot_download(
            hub_id.repo_id, revision=hub_id.revision, cache_dir=cache, local_files_only=True, allow_patterns=wanted
        )
    except hub_errors.LocalEntryNotFoundError:  # (an incomplete snapshot too)
        return None
    return Path(folder)


def download_repo(
    hub_id: HubId,
    cache_dir: str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
    offline: bool | None = None,
) -> tuple[Path, str]:
    """``(what to read, commit)`` for a hub repository: its snapshot folder (or single weight file) in the cache.

    The same rules as :func:`download_checkpoint`: offline (``HF_HUB_OFFLINE``; ``offline=None`` reads it now):
    the cache only; a commit already cached: no network; else a quick reachability check (no network: the cached
    snapshot of that revision if there is one), then the side files and one set of weights (:func:`choose_files`)
    through ``snapshot_download``, which records the branch in the cache (``refs/``) for later offline use.
    Raises :class:`WeightsError` naming ``hub_id.text``.
    """
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:  # pragma: no cover - a dependency, but keep the message clear
        raise WeightsError(f"{hub_id.text}: downloading needs huggingface_hub (pip install huggingface_hub)") from None
    where = f"the Hugging Face cache ({_cache_dir(cache_dir) or 'HF_HUB_CACHE'})"
    local = "or pass a local copy of the repository (weights= in Python, --weights on the command line)"
    if offline is None:
        offline = _offline_now()
    folder = None
    if offline or (hub_id.revision is not None and _COMMIT.fullmatch(hub_id.revision)):
        folder = cached_snapshot(hub_id, cache_dir)
    if folder is None and offline:
        raise WeightsError(
            f"{hub_id.text}: {_revision_label(hub_id)} is not in {where} and offline mode is on (HF_HUB_OFFLINE); "
            f"download it once with network, {local}"
        )
    if folder is None:
        endpoint = resolve_endpoint(endpoint)
        problem = check_reachable(endpoint)
        if problem is None:
            folder = _download_repo(hub_id, _cache_dir(cache_dir), endpoint)
        else:
            folder = cached_snapshot(hub_id, cache_dir)
            if folder is None:
                raise WeightsError(
                    f"{hub_id.text}: cannot download from {endpoint}: no network ({problem}), and "
                    f"{_revision_label(hub_id)} is not in {where}; {local}"
                )
    return weights_in(folder, hub_id), folder.name


def _download_repo(hub_id: HubId, cache: str | None, endpoint: str) -> Path:
    """List the repository at the revision, then fetch the files :func:`choose_files` picks (progress on stderr)."""
    import huggingface_hub as hub
    from huggingface_hub import errors as hub_errors

    try:
        names = hub.HfApi(endpoint=endpoint).list_repo_files(hub_id.repo_id, revision=hub_id.revision)
        wanted = choose_files(list(names), hub_id)
        folder = hub.snapshot_download(
            hub_id.repo_id, revision=hub_id.revision, cache_dir=cache, endpoint=endpoint, allow_patterns=wanted
        )
    except hub_errors.RevisionNotFoundError:
        raise WeightsError(f"{hub_id.text}: {hub_id.repo_id} has no revision {hub_id.revision!r}") from None
    except hub_errors.RepositoryNotFoundError:  # (gated too)
        raise WeightsError(
            f"{hub_id.text}: repository {hub_id.repo_id} not found on {endpoint} (private or gated: log in with "
            "`hf auth login` or set HF_TOKEN)"
        ) from None
    except WeightsError:
        raise
    except _network_errors() as e:
        raise WeightsError(f"{hub_id.text}: could not download from {endpoint} ({first_line(e)})") from None
    return Path(folder)
