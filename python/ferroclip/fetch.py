"""Downloading images from URLs, with the guards a batch job over untrusted lists needs.

Only ``http``/``https`` are fetched (no ``file://`` or ``ftp://`` surprises); every request
has a timeout and a byte cap that is enforced while streaming, so a lying or missing
``Content-Length`` cannot make us buffer a huge body. urllib3 does the HTTP (connection
reuse, redirects, and sockets closed on every error path). Failures raise
:class:`~ferroclip.errors.ImageFetchError` naming the URL, which batch callers turn into
per-item errors.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from . import __version__
from .errors import ImageFetchError

if TYPE_CHECKING:
    import urllib3

__all__ = ["DEFAULT_MAX_URL_BYTES", "DEFAULT_URL_TIMEOUT", "fetch_url", "fetch_urls", "is_url"]

DEFAULT_URL_TIMEOUT = 10.0
DEFAULT_MAX_URL_BYTES = 64 << 20
_CHUNK = 1 << 16
_USER_AGENT = f"ferroclip/{__version__}"
_POOL: urllib3.PoolManager | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> urllib3.PoolManager:
    """One connection pool per process (keep-alive across a batch of URLs)."""
    global _POOL
    import urllib3

    with _POOL_LOCK:
        if _POOL is None:
            _POOL = urllib3.PoolManager(num_pools=16, maxsize=8, headers={"User-Agent": _USER_AGENT})
        return _POOL


def is_url(obj: object) -> bool:
    """True for strings that carry a URL scheme (``scheme://``), whatever the scheme.

    Non-http schemes are still "URLs" so that they fail with a clear message instead of
    being looked up as a local path.
    """
    if not isinstance(obj, str) or "://" not in obj[:16]:
        return False
    scheme = obj.split("://", 1)[0]
    return scheme.isascii() and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum()


def _fail(url: str, reason: str) -> ImageFetchError:
    return ImageFetchError(f"{url}: {reason}", path=url, reason=reason, kind="fetch")


def fetch_url(url: str, *, timeout: float = DEFAULT_URL_TIMEOUT, max_bytes: int = DEFAULT_MAX_URL_BYTES) -> bytes:
    """Download ``url`` and return its body.

    ``timeout`` bounds connecting and each read; redirects are followed (at most 5;
    urllib3 speaks only http/https, so a redirect cannot reach another scheme).

    Raises:
        ImageFetchError: scheme other than http/https, connection error or timeout,
            HTTP status >= 400, or a body larger than ``max_bytes``.
    """
    import urllib3

    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise _fail(url, f"only http and https URLs are fetched, not {scheme or 'no scheme'}")
    try:
        response = _pool().request(
            "GET",
            url,
            preload_content=False,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            retries=urllib3.Retry(total=5, connect=1, read=0, redirect=5, status=0, raise_on_status=False,
                                  allowed_methods=None, respect_retry_after_header=False),
        )
    except urllib3.exceptions.MaxRetryError as exc:
        reason = exc.reason
        # NewConnectionError subclasses ConnectTimeoutError in urllib3 2: test it first.
        if isinstance(reason, urllib3.exceptions.NewConnectionError):
            raise _fail(url, f"cannot connect: {reason}") from None
        if isinstance(reason, (urllib3.exceptions.TimeoutError, TimeoutError)):
            raise _fail(url, f"timed out after {timeout:g} s") from None
        if isinstance(reason, urllib3.exceptions.ResponseError):
            raise _fail(url, f"too many redirects ({reason})") from None
        raise _fail(url, f"cannot connect: {reason}") from None
    except urllib3.exceptions.TimeoutError:
        raise _fail(url, f"timed out after {timeout:g} s") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise _fail(url, f"download failed: {exc}") from None
    complete = False
    try:
        if response.status >= 400:
            raise _fail(url, f"HTTP {response.status} {response.reason or ''}".rstrip())
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise _fail(url, f"body of {int(declared)} bytes is over the cap of {max_bytes} bytes")
        chunks: list[bytes] = []
        total = 0
        for chunk in response.stream(_CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise _fail(url, f"body is over the cap of {max_bytes} bytes")
            chunks.append(chunk)
        complete = True
        return b"".join(chunks)
    except ImageFetchError:
        raise
    except urllib3.exceptions.TimeoutError:
        raise _fail(url, f"timed out after {timeout:g} s") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise _fail(url, f"download failed: {exc}") from None
    finally:
        if not complete:  # a half-read connection cannot be reused: close it first
            response.close()
        response.release_conn()


def fetch_urls(
    urls: Sequence[str],
    *,
    timeout: float = DEFAULT_URL_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_URL_BYTES,
    max_workers: int = 8,
) -> list[bytes | ImageFetchError]:
    """Fetch many URLs concurrently; each entry is the body or the error for that URL."""

    def one(url: str) -> bytes | ImageFetchError:
        try:
            return fetch_url(url, timeout=timeout, max_bytes=max_bytes)
        except ImageFetchError as exc:
            return exc

    if len(urls) <= 1:
        return [one(u) for u in urls]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(urls)), thread_name_prefix="ferroclip-fetch") as pool:
        return list(pool.map(one, urls))
