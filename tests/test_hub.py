"""Named weights (avsegcli.hub): the registry against today's table, and checked downloads from a local server.

No test touches the internet: every fetch goes to a server on 127.0.0.1 (tests/hub_server.py) through
``AVSEG_MIRROR``, into a cache under ``tmp_path`` (``AVSEG_HOME``). The Google Drive route (gdown) cannot run
offline; what is tested of it is the URL classification and that gdown writes into the ``.partial`` file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from avsegcli import weights
from avsegcli.errors import AvsegError, DownloadError
from avsegcli.hub import cache, download, registry
from avsegcli.hub.resolve import get, resolve_weights
from hub_server import Route, WeightsServer

# weights.RELEASED as it stood at commit 759b30d (before the registry), copied literally
RELEASED_759B30D = [
    ("AVSegFormer_res50_s4.pth", "s4-r50", "config/s4/AVSegFormer_res50_s4.py", 76.38, 86.7),
    ("AVSegFormer_pvt2_s4.pth", "s4-pvt2", "config/s4/AVSegFormer_pvt2_s4.py", 83.06, 90.5),
    ("AVSegFormer_res50_ms3.pth", "ms3-r50", "config/ms3/AVSegFormer_res50_ms3.py", 53.81, 65.6),
    ("AVSegFormer_pvt2_ms3.pth", "ms3-pvt2", "config/ms3/AVSegFormer_pvt2_ms3.py", 61.33, 73.0),
    ("AVSegFormer_res50_avss.pth", "avss-r50", "config/avss/AVSegFormer_res50_avss.py", 26.58, 31.5),
    ("AVSegFormer_pvt2_avss.pth", "avss-pvt2", "config/avss/AVSegFormer_pvt2_avss.py", 37.31, 42.8),
]
S4 = registry.lookup("s4-r50")  # unpinned (Drive): its hash is recorded at the first download


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AVSEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AVSEG_OFFLINE", raising=False)
    monkeypatch.setenv("AVSEG_DOWNLOAD_TIMEOUT", "5")
    return tmp_path / "home"


@pytest.fixture(scope="module")
def ckpt_bytes(tiny_ckpt) -> bytes:
    return Path(tiny_ckpt).read_bytes()


def serve(monkeypatch, routes: dict[str, Route]) -> WeightsServer:
    srv = WeightsServer(routes).__enter__()
    monkeypatch.setenv("AVSEG_MIRROR", srv.url)
    return srv


def cache_files(home: Path) -> list[str]:
    folder = home / "weights"
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def test_registry_extends_released_as_it_was():
    assert [(r.filename, r.preset, r.official_config, r.miou, r.fscore) for r in weights.RELEASED] == RELEASED_759B30D
    assert weights.RELEASED == registry.RELEASED and weights.ReleasedCheckpoint is registry.ReleasedCheckpoint
    assert [(r.name, r.task) for r in weights.RELEASED] == [
        ("s4-r50", "s4"), ("s4-pvt2", "s4"), ("ms3-r50", "ms3"), ("ms3-pvt2", "ms3"), ("avss-r50", "avss"), ("avss-pvt2", "avss")]
    assert all(r.name == r.preset for r in weights.RELEASED)  # a name is the preset it loads as
    assert registry.names() == [*(r.name for r in weights.RELEASED), "resnet50", "pvt2-b5", "vggish"]
    assert [registry.lookup(n).kind for n in ("resnet50", "pvt2-b5", "vggish")] == ["backbone", "backbone", "vggish"]
    # the authors' README links (vvvb-github/AVSegFormer @ 7083cb6) and torch.hub-style hash prefixes
    assert registry.drive_id(registry.lookup("s4-pvt2").urls[0]) == "1ZJ55jxoHP1ur-hLBkGcha8sjptE_shfw"
    assert registry.lookup("resnet50").hash_prefix == "19c8e357" and registry.lookup("vggish").hash_prefix == "10086976"
    assert not any(r.pinned for r in weights.RELEASED) and registry.lookup("pvt2-b5").pinned is False


def test_url_helpers(monkeypatch):
    assert registry.drive_id("https://drive.google.com/file/d/abc-_1/view?usp=drive_link") == "abc-_1"
    assert registry.drive_id("https://drive.google.com/uc?id=xyz") == "xyz"
    assert registry.drive_id("https://download.pytorch.org/models/resnet50-19c8e357.pth") is None
    assert registry.page_url("https://drive.google.com/uc?id=xyz") == "https://drive.google.com/file/d/xyz/view"
    monkeypatch.delenv("AVSEG_MIRROR", raising=False)
    assert registry.source_urls(S4) == S4.urls
    monkeypatch.setenv("AVSEG_MIRROR", "http://mirror:8000/w/")
    assert registry.source_urls(S4) == ("http://mirror:8000/w/AVSegFormer_res50_s4.pth",)
    assert download.looks_like_checkpoint(b"PK\x03\x04") is None and download.looks_like_checkpoint(b"\x80\x02") is None
    assert "HTML" in download.looks_like_checkpoint(b"\n<!DOCTYPE html><html>quota</html>")
    assert "not a checkpoint" in download.looks_like_checkpoint(b"hello")


def test_drive_urls_go_through_gdown_into_the_partial_file(home, monkeypatch):
    """The Drive route without a network: gdown is called with the file id and the open ``.partial`` file."""
    import gdown

    seen = {}

    def fake_download(*, id, output, quiet, progress, timeout):
        seen.update(id=id, name=output.name, quiet=quiet)
        output.write(b"<html>Google Drive - quota exceeded</html>")

    monkeypatch.delenv("AVSEG_MIRROR", raising=False)
    monkeypatch.setattr(gdown, "download", fake_download)
    with pytest.raises(DownloadError, match="HTML page") as err:
        get(registry.lookup("s4-pvt2"), show_progress=False)
    assert seen == {"id": "1ZJ55jxoHP1ur-hLBkGcha8sjptE_shfw", "quiet": True,
                    "name": str(home / "weights" / "AVSegFormer_pvt2_s4.pth.partial")}
    assert "https://drive.google.com/file/d/1ZJ55jxoHP1ur-hLBkGcha8sjptE_shfw/view" in str(err.value)
    assert cache_files(home) == []


def test_download_progress_cache_hit_and_recorded_hash(home, monkeypatch, ckpt_bytes):
    srv = serve(monkeypatch, {S4.filename: Route(body=ckpt_bytes)})
    calls: list[tuple[int, int | None]] = []
    path = download.fetch(S4, progress=lambda done, total: calls.append((done, total)))
    assert path == home / "weights" / S4.filename and path.read_bytes() == ckpt_bytes
    assert calls[0] == (0, len(ckpt_bytes)) and calls[-1] == (len(ckpt_bytes), len(ckpt_bytes))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    digest = hashlib.sha256(ckpt_bytes).hexdigest()
    assert json.loads((home / "weights" / "hashes.json").read_text()) == {S4.filename: digest}
    assert cache.hash_status(S4) == "recorded" and cache.hash_status(registry.lookup("s4-pvt2")) == "-"
    # the cache hit: no second request; the name loads as the tiny model
    assert resolve_weights("s4-r50") == path and srv.log.count(S4.filename) == 1
    model = weights.load_model("s4-r50")
    assert model.config["name"] == "tiny" and srv.log.count(S4.filename) == 1
    # a cached file that changed after its recorded download: one line, naming the fix
    path.write_bytes(ckpt_bytes[:-1] + bytes([ckpt_bytes[-1] ^ 1]))
    with pytest.raises(DownloadError, match="the cached file changed; delete it and run `avseg weights get s4-r50`"):
        resolve_weights("s4-r50")
    srv.__exit__()


def test_pinned_hash_checked_before_the_rename(home, monkeypatch, ckpt_bytes):
    srv = serve(monkeypatch, {S4.filename: Route(body=ckpt_bytes), "resnet50-19c8e357.pth": Route(body=ckpt_bytes)})
    pinned = dataclasses.replace(S4, sha256=hashlib.sha256(ckpt_bytes).hexdigest())  # a published full hash
    assert download.fetch(pinned, show_progress=False).read_bytes() == ckpt_bytes
    assert not (home / "weights" / "hashes.json").exists()  # pinned: nothing to record
    wrong = dataclasses.replace(S4, name="s4-wrong", sha256="0" * 64)
    (home / "weights" / S4.filename).unlink()
    with pytest.raises(DownloadError, match="is not the published 0000000000000000") as err:
        download.fetch(wrong, show_progress=False)
    assert "deleted" in str(err.value) and "\n" not in str(err.value)
    # the real resnet50 entry: the served bytes do not start with its file name's 19c8e357
    with pytest.raises(DownloadError, match="does not start with 19c8e357"):
        resolve_weights("resnet50", kind="backbone")
    assert cache_files(home) == []  # neither file, nor a .partial
    srv.__exit__()


def test_html_page_refused(home, monkeypatch):
    page = b"<!DOCTYPE html><html><body>Too many users have viewed or downloaded this file</body></html>"
    srv = serve(monkeypatch, {S4.filename: Route(body=page, content_type="text/html")})
    with pytest.raises(DownloadError, match="HTML page, not a checkpoint"):
        resolve_weights("s4-r50")
    assert cache_files(home) == []
    srv.__exit__()


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "restarted"])
def test_interrupted_download_leaves_no_file_then_resumes(home, monkeypatch, ckpt_bytes, ranges):
    cut = len(ckpt_bytes) // 3
    srv = serve(monkeypatch, {S4.filename: Route(body=ckpt_bytes, drop_after=cut, ranges=ranges)})
    with pytest.raises(DownloadError, match="dropped mid-file"):
        resolve_weights("s4-r50")
    assert not (home / "weights" / S4.filename).exists()
    kept = (home / "weights" / (S4.filename + ".partial")).stat().st_size
    assert cut - download.CHUNK < kept <= cut  # what arrived, up to the last whole read
    path = resolve_weights("s4-r50")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(ckpt_bytes).hexdigest()
    assert srv.log.requests[1] == ("/" + S4.filename, f"bytes={kept}-")  # asked to resume; served 206 or 200
    assert cache_files(home) == [S4.filename, "hashes.json"]
    srv.__exit__()


def test_full_disk_is_one_line_and_leaves_nothing(home, monkeypatch, ckpt_bytes):
    """ENOSPC while writing the .partial file: one line naming the reason and the way round; no file is left."""
    import builtins
    import errno

    srv = serve(monkeypatch, {S4.filename: Route(body=ckpt_bytes)})

    class FullDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, block):
            if self.written + len(block) > len(ckpt_bytes) // 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(block)
            return self.f.write(block)

    real_open = builtins.open
    monkeypatch.setattr(download, "open", lambda path, mode="r", *a, **k: (
        FullDisk(real_open(path, mode, *a, **k)) if str(path).endswith(".partial") and "b" in mode and "r" not in mode
        else real_open(path, mode, *a, **k)), raising=False)
    with pytest.raises(DownloadError) as err:
        resolve_weights("s4-r50")
    msg = str(err.value)
    assert "no space left on device" in msg and "AVSEG_HOME" in msg and "--weights PATH" in msg and "\n" not in msg
    assert cache_files(home) == []  # neither the file nor its .partial
    monkeypatch.setattr(download, "open", real_open, raising=False)
    assert resolve_weights("s4-r50").read_bytes() == ckpt_bytes  # space again: the next get completes
    srv.__exit__()


def test_names_paths_and_kinds(home, monkeypatch, tmp_path):
    with pytest.raises(AvsegError, match="not a known weights name .names: s4-r50, s4-pvt2, .*vggish"):
        resolve_weights("s4-r5O")
    assert resolve_weights("missing.pth") == Path("missing.pth")  # the loader's "no such checkpoint file"
    with pytest.raises(AvsegError, match="no such checkpoint file"):
        weights.read_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(AvsegError, match="s4-pvt2 is a whole model, not for --backbone-weights .names there: resnet50, pvt2-b5"):
        resolve_weights("s4-pvt2", kind="backbone")
    (tmp_path / "s4-r50").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert resolve_weights("s4-r50") == Path("s4-r50")  # an existing path wins over a name


def test_offline_makes_no_request(home, monkeypatch, ckpt_bytes):
    srv = serve(monkeypatch, {S4.filename: Route(body=ckpt_bytes)})
    monkeypatch.setenv("AVSEG_OFFLINE", "1")
    with pytest.raises(DownloadError, match=f"s4-r50 is not in the cache and avseg is offline.*save it as {home}"):
        resolve_weights("s4-r50")
    assert srv.log.requests == []
    srv.__exit__()


def test_named_vggish_and_init_through_the_training_loaders(home, monkeypatch, ckpt_bytes, tiny_ckpt):
    """``--vggish-weights vggish`` and ``--init NAME`` go through the same resolution (vggish: a test entry whose
    published hash is the served file's, injected into the registry)."""
    import torch

    from avsegcli.train.init_weights import init_checkpoint_config, load_init_checkpoint, load_vggish_weights

    model = weights.load_model(tiny_ckpt)
    buf = home.parent / "vggish.pth"
    torch.save({k: v for k, v in model.vggish.state_dict().items()}, buf)
    vgg = buf.read_bytes()
    entry = dataclasses.replace(registry.lookup("vggish"), hash_prefix=None, sha256=hashlib.sha256(vgg).hexdigest())
    monkeypatch.setattr(registry, "REGISTRY", tuple(entry if e.name == "vggish" else e for e in registry.REGISTRY))
    srv = serve(monkeypatch, {entry.filename: Route(body=vgg), S4.filename: Route(body=ckpt_bytes)})
    assert load_vggish_weights(model, "vggish") == sum(v.numel() for v in model.vggish.state_dict().values())
    assert init_checkpoint_config("s4-r50")["name"] == "tiny" and load_init_checkpoint(model, "s4-r50") > 0
    assert srv.log.count(entry.filename) == 1 and srv.log.count(S4.filename) == 1
    srv.__exit__()
