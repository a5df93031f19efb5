"""The hub, without hanging: the local cache first, the network only when the hub answers within a few seconds.

With ``HF_HUB_OFFLINE`` set (or ``local_files_only=True``) only local files and the HF cache are used. Otherwise the
cache is tried first; the network is used only when the hub endpoint answers an HTTP HEAD request within
``HUB_PROBE_TIMEOUT_S`` seconds, so a machine without network fails within about that long (at once when name
resolution fails). Once the hub has answered, huggingface_hub's own timeouts (``HF_HUB_ETAG_TIMEOUT``,
``HF_HUB_DOWNLOAD_TIMEOUT``) govern the download.
"""

from __future__ import annotations

import os
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from tficon.model.errors import _ALTERNATIVES, ModelNotAvailableError
from tficon.model.identify import _component_names, _read_json

__all__ = ["HUB_PROBE_TIMEOUT_S"]

HUB_PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "on", "yes", "true"}


def _offline_requested(local_files_only: bool | None) -> bool:
    if local_files_only is not None:
        return bool(local_files_only)
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE once at import; reading it here as well honours a later change.
    variables = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    environment = any(os.environ.get(v, "").strip().lower() in _TRUE for v in variables)
    return environment or bool(constants.HF_HUB_OFFLINE)


def _hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the hub endpoint answers an HTTP HEAD request within ``timeout_s``.

    Name lookup, proxies (urllib reads the same ``*_PROXY`` variables) and TLS are all part of the test,
    so a sandbox that accepts TCP connections but never answers counts as unreachable. Any HTTP status is
    an answer; so is a certificate the system store rejects (a TLS-inspecting proxy: huggingface_hub may
    still trust it through its own CA settings, so let it try).
    """
    outcome: list[bool] = []

    def ask() -> None:
        request = urllib.request.Request(_endpoint(), method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                outcome.append(True)
        except urllib.error.HTTPError:
            outcome.append(True)
        except urllib.error.URLError as error:
            outcome.append(isinstance(error.reason, ssl.SSLCertVerificationError))
        except (OSError, ValueError):
            outcome.append(False)

    # A thread, because name resolution has no timeout of its own.
    probe = threading.Thread(target=ask, daemon=True, name="tficon-hub-probe")
    probe.start()
    probe.join(timeout_s)
    return bool(outcome and outcome[0])


def _hub_snapshot(repo_id: str, local_files_only: bool | None) -> Path:
    """The local folder of hub pipeline ``repo_id``: from the cache, else downloaded when allowed and reachable."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache_error: Exception | None = None
    # try_to_load_from_cache only reads the file system. Any hub call, even a cache-only one, may first
    # spend seconds on a one-off metadata request when the network is silent, so skip them when nothing is cached.
    cached_index = try_to_load_from_cache(repo_id, "model_index.json")
    if isinstance(cached_index, str):
        try:
            pipeline, skip = _pipeline_class(_read_json(Path(cached_index)))
            return Path(pipeline.download(repo_id, local_files_only=True, **skip))
        except (OSError, ValueError) as error:
            cache_error = error
    if _offline_requested(local_files_only):
        reason = "it is not in the local Hugging Face cache and offline mode is on (HF_HUB_OFFLINE / local_files_only)"
        raise ModelNotAvailableError(f"cannot load model {repo_id!r}: {reason}. {_ALTERNATIVES}") from cache_error
    if local_files_only is None and not _hub_reachable():
        reason = (
            f"it is not in the local Hugging Face cache and the hub ({urlparse(_endpoint()).hostname}) cannot be "
            f"reached (no connection within {HUB_PROBE_TIMEOUT_S:g} s)"
        )
        raise ModelNotAvailableError(f"cannot load model {repo_id!r}: {reason}. {_ALTERNATIVES}") from cache_error
    try:
        # Check the pipeline type on model_index.json alone before fetching gigabytes of weights.
        index = _read_json(Path(hf_hub_download(repo_id, "model_index.json")))
        names = _component_names(index)
        refiner = "text_encoder_2" in names and "text_encoder" not in names
        if refiner or "transformer" in names or "unet" not in names:
            raise ValueError(
                f"{repo_id!r} is a {index.get('_class_name', 'non-SD')} repository; TF-ICON runs on SD 1.x, 2.x and "
                "SDXL base."
            )
        pipeline, skip = _pipeline_class(index)
        return Path(pipeline.download(repo_id, local_files_only=False, **skip))
    except OSError as error:
        raise ModelNotAvailableError(f"cannot download model {repo_id!r}: {error}. {_ALTERNATIVES}") from error


def _pipeline_class(index: dict):
    """The diffusers pipeline class that downloads a hub repository, and the components it must not fetch."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if "text_encoder_2" in _component_names(index):
        return StableDiffusionXLPipeline, {}
    # The safety checker is never used: passing it tells diffusers not to fetch or require its weights.
    return StableDiffusionPipeline, {"safety_checker": None, "feature_extractor": None}


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT

