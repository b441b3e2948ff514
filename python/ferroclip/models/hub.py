"""Whether the Hugging Face hub answers, asked once and quickly before transformers asks it.

With no network, huggingface_hub retries each failed request five times with backoff
(1 + 2 + 4 + 8 + 8 s), so a model load took ~26 s to say "couldn't connect". One DNS lookup
and TCP connect with a short timeout answers in milliseconds when the name does not resolve
and in ``timeout`` seconds at worst. When the hub is unreachable, a model the local cache
holds is loaded from it (with a warning); one it does not hold is a ``ModelNotFoundError``
that says so, instead of the retries and the generic message.

Not asked behind a proxy (``HTTPS_PROXY`` and friends: a direct connect says nothing about
the proxy's reach) or in offline mode (``HF_HUB_OFFLINE``: nothing is downloaded anyway).
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ModelNotFoundError

__all__ = ["hub_unreachable", "prefer_cache_when_offline"]

_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
#: (monotonic time, endpoint, reason or None): a result is reused for a minute.
_last: tuple[float, str, str | None] | None = None


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub endpoint cannot be reached (``"huggingface.co:443: Name or service not
    known"``), or ``None`` when it can, or when this cannot be told (proxy, offline mode)."""
    global _last
    if any(os.environ.get(v) for v in _PROXY_VARS) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return None
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if _last is not None and _last[1] == endpoint and time.monotonic() - _last[0] < 60:
        return _last[2]
    url = urlsplit(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    reason: str | None = None
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        reason = f"{host}:{port}: {exc.strerror or exc}"
    _last = (time.monotonic(), endpoint, reason)
    return reason


def prefer_cache_when_offline(source: str, revision: str | None) -> bool:
    """``True`` when the hub is unreachable and the local cache holds a snapshot of
    ``source`` (load it with ``local_files_only``; a revision it lacks is then reported as
    an offline cache miss); ``False`` when the hub answers. Raises
    ``ModelNotFoundError`` when neither has it."""
    reason = hub_unreachable()
    if reason is None:
        return False
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # no hub client: transformers will say what is missing
        return False
    # The hub cache's layout: models--{owner}--{name}/snapshots/<commit>/ per fetched revision.
    snapshots = Path(HF_HUB_CACHE) / f"models--{source.replace('/', '--')}" / "snapshots"
    cached = snapshots.is_dir() and any(snapshots.iterdir())
    if cached:
        warnings.warn(f"cannot reach the Hugging Face hub ({reason}): loading {source} from the local cache", stacklevel=3)
        return True
    raise ModelNotFoundError(
        f"cannot reach the Hugging Face hub ({reason}) and {source} is not in the local cache ({HF_HUB_CACHE}): "
        f"connect to the network (or set HTTPS_PROXY), or fetch it where there is one (`hf download {source}`) "
        "and copy the cache, or give a local checkpoint dir",
        source,
    )
