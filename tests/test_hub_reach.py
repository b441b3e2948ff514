"""An unreachable hub is answered at once: the cached copy when there is one, else a
ModelNotFoundError saying so; never huggingface_hub's five retries."""

from __future__ import annotations

import socket
import warnings

import pytest

import ferroclip
from ferroclip.errors import ModelNotFoundError
from ferroclip.models import hub


@pytest.fixture
def no_network(monkeypatch):
    for v in hub._PROXY_VARS + ("HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(hub, "_last", None)

    def refuse(addr, timeout=None, **kw):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)

    def no_hub_call(*a, **kw):  # transformers must not be asked to go out
        raise AssertionError("the hub was contacted although it is unreachable")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub_call)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub_call)


def test_uncached_model_with_no_network_is_a_clear_miss(no_network, tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError) as info:
        ferroclip.load_model("someone/not-cached-clip", device="cpu")
    msg = str(info.value)
    assert "cannot reach the Hugging Face hub (huggingface.co:443: Name or service not known)" in msg
    assert "someone/not-cached-clip is not in the local cache" in msg and str(tmp_path / "hub") in msg
    assert isinstance(info.value, FileNotFoundError)


def test_cached_model_with_no_network_loads_from_the_cache(no_network, tmp_path, monkeypatch):
    snap = tmp_path / "hub" / "models--someone--cached-clip" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert hub.prefer_cache_when_offline("someone/cached-clip", None) is True
    assert any("loading someone/cached-clip from the local cache" in str(w.message) for w in seen)


def test_reachable_hub_and_proxies_are_left_to_transformers(monkeypatch):
    monkeypatch.setattr(hub, "_last", None)
    for v in hub._PROXY_VARS + ("HF_HUB_OFFLINE",):
        monkeypatch.delenv(v, raising=False)
    opened = []

    class Conn:
        def close(self):
            opened.append(True)

    monkeypatch.setattr(socket, "create_connection", lambda addr, timeout=None: Conn())
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.internal:8080")
    assert hub.hub_unreachable() is None and opened
    monkeypatch.setattr(hub, "_last", None)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed behind a proxy"))
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert hub.hub_unreachable() is None
