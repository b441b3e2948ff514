"""Downloading images from URLs, with the guards a batch job over untrusted lists needs.

Only ``http``/``https`` are fetched (no ``file://`` or ``ftp://`` surprises); every request
has a timeout and a byte cap that is enforced while streaming, so a lying or missing
``Content-Length`` cannot make us buffer a huge body. Failures raise
:class:`~ferroclip.errors.ImageFetchError` naming the URL, which batch callers turn into
per-item errors.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence

from . import __version__
from .errors import ImageFetchError

__all__ = ["DEFAULT_MAX_URL_BYTES", "DEFAULT_URL_TIMEOUT", "fetch_url", "fetch_urls", "is_url"]

DEFAULT_URL_TIMEOUT = 10.0
DEFAULT_MAX_URL_BYTES = 64 << 20
_CHUNK = 1 << 16
_USER_AGENT = f"ferroclip/{__version__}"


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

    Raises:
        ImageFetchError: scheme other than http/https, connection error or timeout,
            HTTP status >= 400, or a body larger than ``max_bytes``.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise _fail(url, f"only http and https URLs are fetched, not {scheme or 'no scheme'}")
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (scheme checked above)
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise _fail(url, f"body of {int(declared)} bytes is over the cap of {max_bytes} bytes")
            chunks: list[bytes] = []
            total = 0
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise _fail(url, f"body is over the cap of {max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except ImageFetchError:
        raise
    except urllib.error.HTTPError as exc:
        raise _fail(url, f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            raise _fail(url, f"timed out after {timeout:g} s") from None
        raise _fail(url, f"cannot connect: {reason}") from None
    except TimeoutError:
        raise _fail(url, f"timed out after {timeout:g} s") from None
    except OSError as exc:
        raise _fail(url, f"download failed: {exc}") from None


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
