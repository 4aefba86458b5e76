"""``avseg weights list/get/info`` and names through ``avseg run/eval/train``, as a user runs them (subprocesses
and the CLI runner), against a local HTTP server on 127.0.0.1 (tests/hub_server.py via ``AVSEG_MIRROR``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from avsegcli.hub import registry
from conftest import REPO, run_cli
from hub_server import Route, WeightsServer

S4 = registry.lookup("s4-r50")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt_bytes(tiny_ckpt) -> bytes:
    return Path(tiny_ckpt).read_bytes()


def env_for(home: Path, mirror: str | None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("AVSEG_OFFLINE", "AVSEG_MIRROR")}
    env.update(AVSEG_HOME=str(home), AVSEG_DOWNLOAD_TIMEOUT="2", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    if mirror:
        env["AVSEG_MIRROR"] = mirror
    return env


def one_line_exit_2(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("status,words", [(404, "HTTP 404 (not found)"), (403, "HTTP 403 (forbidden)"),
                                          (429, "HTTP 429 (too many requests, try later)")])
def test_http_errors_are_one_line(status, words, tmp_path):
    with WeightsServer({S4.filename: Route(status=status)}) as srv:
        line = one_line_exit_2(run_cli("weights", "get", "s4-r50", env=env_for(tmp_path, srv.url)))
    assert words in line and f"save it as {tmp_path / 'weights' / S4.filename}" in line and "--weights PATH" in line
    assert not (tmp_path / "weights" / S4.filename).exists()


def test_unreachable_timeout_dns_offline_and_read_only(tmp_path, ckpt_bytes):
    line = one_line_exit_2(run_cli("weights", "get", "s4-r50", env=env_for(tmp_path, f"http://127.0.0.1:{free_port()}")))
    assert "connection refused by 127.0.0.1" in line and "fetch it by hand from http://127.0.0.1" in line
    line = one_line_exit_2(run_cli("weights", "get", "s4-r50", env=env_for(tmp_path, "http://no-such-host.invalid")))
    assert "no-such-host.invalid" in line and ("DNS" in line or "timeout" in line or "no network" in line)
    with WeightsServer({S4.filename: Route(body=ckpt_bytes, delay=4)}) as srv:  # answers after the 2 s timeout
        line = one_line_exit_2(run_cli("weights", "get", "s4-r50", env=env_for(tmp_path, srv.url)))
    assert "within 2 s (timeout)" in line
    with WeightsServer({S4.filename: Route(body=ckpt_bytes)}) as srv:
        line = one_line_exit_2(run_cli("weights", "get", "s4-r50", "--offline", env=env_for(tmp_path, srv.url)))
        assert "not in the cache and avseg is offline" in line and srv.log.requests == []
        from media_gen import make_video

        make_video(tmp_path / "v.mp4", seconds=1, fps=10, size=(64, 48), tone_hz=440)
        line = one_line_exit_2(run_cli("run", tmp_path / "v.mp4", "--out", tmp_path / "o", "--weights", "s4-r50",
                                       env=env_for(tmp_path, srv.url, AVSEG_OFFLINE="1")))
        assert "offline" in line and srv.log.requests == []
        # a cache folder that cannot be written (root ignores permission bits: a folder under /sys instead)
        ro = Path("/sys/avseg-cache") if os.geteuid() == 0 else tmp_path / "ro"
        if os.geteuid() != 0:
            ro.mkdir()
            ro.chmod(0o555)
        line = one_line_exit_2(run_cli("weights", "get", "s4-r50", env=env_for(ro, srv.url)))
        assert "cannot create the weights cache" in line and "AVSEG_HOME" in line and srv.log.requests == []
    assert not (tmp_path / "weights" / S4.filename).exists()


def test_list_get_info_and_two_concurrent_gets(tmp_path, ckpt_bytes):
    home = tmp_path / "home"
    rows = json.loads(run_cli("weights", "list", "--json", env=env_for(home, None)).stdout)
    assert [r["name"] for r in rows] == registry.names() and not any(r["cached"] for r in rows)
    assert [r["hash"] for r in rows[-3:]] == ["pinned", "-", "pinned"]
    with WeightsServer({S4.filename: Route(body=ckpt_bytes, chunk_delay=0.05)}) as srv:  # ~1.3 s per download
        env = env_for(home, srv.url)
        procs = [subprocess.Popen([sys.executable, "-m", "avsegcli", "weights", "get", "s4-r50", "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        got = sorted(json.loads(o)[0]["fetched"] for o, _ in outs)
        assert got == [False, True] and srv.log.full_bodies == {"/" + S4.filename: 1}
        assert "AVSegFormer_res50_s4.pth" in "".join(e for _, e in outs)  # the progress bar's label on stderr
        proc = run_cli("weights", "info", "s4-r50", "--json", env=env)
        assert proc.returncode == 0 and json.loads(proc.stdout)["path"] == str(home / "weights" / S4.filename)
        assert srv.log.count(S4.filename) == 1
    rows = {r["name"]: r for r in json.loads(run_cli("weights", "list", "--json", env=env_for(home, None)).stdout)}
    assert rows["s4-r50"]["cached"] and rows["s4-r50"]["hash"] == "recorded" and rows["s4-r50"]["size"] == len(ckpt_bytes)
    table = run_cli("weights", "list", env={**env_for(home, None), "COLUMNS": "200"}).stdout
    assert "s4-pvt2" in table and "83.06" in table and "recorded" in table
    line = one_line_exit_2(run_cli("weights", "get", "s4-pvt3", env=env_for(home, None)))
    assert "unknown weights name 's4-pvt3' (names: s4-r50, s4-pvt2" in line


def test_names_through_run_with_render(tmp_path, ckpt_bytes):
    """``avseg run --weights NAME --render``: the named model segments and draws (``avseg render`` itself takes
    saved masks, no checkpoint)."""
    from media_gen import make_video

    make_video(tmp_path / "v.mp4", seconds=1, fps=10, size=(64, 48), tone_hz=440)
    with WeightsServer({S4.filename: Route(body=ckpt_bytes)}) as srv:
        env = env_for(tmp_path / "home", srv.url)
        proc = run_cli("run", tmp_path / "v.mp4", "--out", tmp_path / "o", "--weights", "s4-r50", "--render",
                       "--device", "cpu", "--workers", "0", "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        summary = json.loads((tmp_path / "o" / "summary.json").read_text())
        assert summary["model"]["weights"] == str(tmp_path / "home" / "weights" / S4.filename)
        assert (tmp_path / "o" / "v" / "overlay.mp4").is_file() and srv.log.count(S4.filename) == 1
        line = one_line_exit_2(run_cli("run", tmp_path / "v.mp4", "--out", tmp_path / "o2", "--weights",
                                       tmp_path / "nope.pth", env=env))
        assert "nope.pth" in line and "no such checkpoint file" in line


def test_names_through_eval_and_train(tmp_path, monkeypatch):
    """``avseg eval --weights NAME`` and ``avseg train --init NAME`` (CLI runner, in this process)."""
    import torch
    import typer
    from typer.testing import CliRunner

    from avsegcli.build import build_model, preset
    from avsegcli.cli import eval_cmd, train_cmd
    from avsegcli.data import write_fake_avsbench
    from avsegcli.weights import save_checkpoint

    data = tmp_path / "data"
    write_fake_avsbench(data, "s4", videos_per_split=2, seed=0, image_hw=(32, 32))
    torch.manual_seed(0)
    body = save_checkpoint(build_model(preset("tiny", image_size=32)), tmp_path / "t.safetensors").read_bytes()
    app = typer.Typer()
    app.command("eval")(eval_cmd.evaluate)
    app.command("train")(train_cmd.train)
    monkeypatch.setenv("AVSEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AVSEG_OFFLINE", raising=False)
    with WeightsServer({S4.filename: Route(body=body)}) as srv:
        monkeypatch.setenv("AVSEG_MIRROR", srv.url)
        res = CliRunner().invoke(app, ["eval", "--task", "s4", "--data", str(data), "--weights", "s4-r50", "--limit", "2",
                                       "--device", "cpu", "--workers", "0", "--json", str(tmp_path / "e.json"), "-q"])
        assert res.exit_code == 0, (res.output, res.exception)
        model = json.loads((tmp_path / "e.json").read_text())["model"]
        assert model["weights"] == str(tmp_path / "home" / "weights" / S4.filename) and model["preset"] == "tiny"
        res = CliRunner().invoke(app, ["train", "--task", "s4", "--data", str(data), "--out", str(tmp_path / "run"),
                                       "--init", "s4-r50", "--image-size", "32", "--max-steps", "1", "--batch-size", "2",
                                       "--workers", "0", "--device", "cpu", "--val-every", "0", "-q", "--json"])
        assert res.exit_code == 0, (res.output, res.exception)
        assert srv.log.count(S4.filename) == 1  # fetched once, then the cache
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["init"] == "s4-r50"
