"""``avseg run``'s flags as one record (issue 22): every flag lands once in :class:`RunOptions`, checked in one place
with the command line's words, ``--audio`` parsed once, ``--workers`` under ``--ray`` a usage error, and the help
grouped in panels with what a first run needs first."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import avsegcli.cli as cli
import avsegcli.run.options as options
import avsegcli.run.session as session
from avsegcli.cli.common import set_verbosity
from avsegcli.errors import AvsegError
from avsegcli.run.options import RayOptions, RunOptions


class _Stop(Exception):
    pass


def _captured(monkeypatch, args: list[str]) -> RunOptions:
    """The record the command line hands to the library for ``avseg run ARGS`` (the run itself is stopped)."""
    seen: list[RunOptions] = []

    def fake_run_all(opts, **_):
        seen.append(opts)
        raise _Stop

    monkeypatch.setattr(session, "run_all", fake_run_all)
    monkeypatch.setenv("AVSEG_OFFLINE", "0")  # --offline sets it for the process: restored after the test
    cli._register()
    try:
        result = CliRunner().invoke(cli.app, ["run", *args])
    finally:
        set_verbosity(False, False)
    assert isinstance(result.exception, _Stop), result.output
    return seen[0]


def test_every_flag_lands_once_in_the_record(monkeypatch, tmp_path):
    cli._register()
    params = typer.main.get_command(cli.app).commands["run"].params
    flags = [f.name for f in dataclasses.fields(RunOptions) if f.init and f.name != "cluster"]
    ray_flags = [f.name for f in dataclasses.fields(RayOptions) if f.name not in ("start_timeout", "progress_every")]
    assert len(params) == len(flags) + len(ray_flags) == 29  # one field per flag, none left over

    out, w = tmp_path / "o", tmp_path / "w.pth"
    opts = _captured(monkeypatch, ["a.mp4", "dir", "--out", str(out), "--weights", str(w), "--device", "cpu", "--fps", "2.5",
                                   "--format", "npz", "--glob", "*.mkv", "--start", "1", "--end", "3", "--audio", "silence",
                                   "--precision", "fp32", "--impl", "reference", "--compile", "--batch-size", "3", "--backend", "openvino", "--offline", "--save-probs",
                                   "--overwrite", "--render", "--sheet", "--json", "-q", "--ray", "auto", "--ray-actors", "2",
                                   "--ray-gpus-per-actor", "0.5", "--ray-cpus-per-actor", "2", "--ray-retries", "1"])
    assert opts == RunOptions(inputs=["a.mp4", "dir"], glob="*.mkv", fps=2.5, start=1.0, end=3.0, audio="silence", workers=None,
                              weights=str(w), device="cpu", precision="fp32", impl="reference", compile=True, batch_size=3, backend="openvino", offline=True, out=out,
                              fmt="npz", save_probs=True, overwrite=True, render=True, sheet=True, quiet=True, verbose=False,
                              json=True, cluster=RayOptions(address="auto", actors=2, gpus_per_actor=0.5, cpus_per_actor=2.0,
                                                            retries=1))
    plain = _captured(monkeypatch, ["a.mp4", "--out", str(out), "--workers", "3"])
    assert plain == RunOptions(inputs=["a.mp4"], out=out, workers=3)  # the record's defaults are the command line's


@pytest.mark.parametrize("change, message", [
    ({"fmt": "bogus"}, "--format must be png, npz, rle or all, not 'bogus'"),
    ({"save_probs": True}, "--save-probs needs --format npz (or all)"),
    ({"fps": math.nan}, "--fps must be a number from 0 (every frame) to 1000, not nan"),
    ({"fps": -1.0}, "--fps must be a number from 0 (every frame) to 1000, not -1.0"),
    ({"batch_size": 0}, "--batch-size must be from 1 to 4096, not 0"),
    ({"backend": "tensorrt"}, "--backend must be torch, onnxruntime, openvino, not 'tensorrt'"),
    ({"workers": 999}, "--workers must be from 0 (decode in this process) to 256, not 999"),
    ({"start": 5.0, "end": 2.0}, "--start (5.0) must be before --end (2.0)"),
    ({"fmt": "bogus", "fps": math.nan, "save_probs": True}, "--format must be png, npz, rle or all, not 'bogus'"),  # first wins
])
def test_validate_says_what_the_command_line_said(tmp_path, change, message):
    with pytest.raises(AvsegError) as err:
        RunOptions(out=tmp_path / "o", **change).validate()
    assert str(err.value) == message
    assert not (tmp_path / "o").exists()


def test_audio_is_parsed_once(monkeypatch, tmp_path):
    calls = []
    real = options.parse_audio
    monkeypatch.setattr(options, "parse_audio", lambda value: calls.append(value) or real(value))
    opts = RunOptions(out=tmp_path, audio="noise")
    assert opts.validate() is opts and opts.validate() is opts
    assert calls == ["noise"] and opts.heard.kind == "noise" and opts.sample_fps == 1.0
    assert RunOptions(out=tmp_path, fps=0).validate().sample_fps is None and RunOptions(out=tmp_path).validate().heard is None


def test_workers_under_ray_is_a_usage_error(monkeypatch, tmp_path):
    """Each Ray actor decodes inline: decode processes there would be CPUs Ray neither grants nor sees."""
    monkeypatch.setattr(options, "import_ray", lambda: None)  # whether or not Ray is installed here
    with pytest.raises(AvsegError, match=r"^--workers does not apply with --ray: .*--ray-actors"):
        RunOptions(out=tmp_path, workers=2, cluster=RayOptions()).validate()
    RunOptions(out=tmp_path, cluster=RayOptions()).validate()  # without --workers: fine
    with pytest.raises(AvsegError, match="--ray-actors and --ray-retries must be 0 or more"):
        RunOptions(out=tmp_path, cluster=RayOptions(actors=-1)).validate()


def test_help_groups_the_flags_first_run_first():
    cli._register()
    text = CliRunner().invoke(cli.app, ["run", "--help"], terminal_width=200).output
    titles = ["Arguments", "Options", "Input", "Model and precision", "Output", "Display", "Cluster (Ray)"]
    at = [text.index(f"─ {t} ─") for t in titles]
    assert at == sorted(at), text
    first = text[at[1]:at[2]]  # the first panel of options: what a first run needs (and --help)
    for flag in ("--out", "--weights", "--device", "--fps", "--format", "--help"):
        assert flag in first, flag
    assert "--precision" not in first and "--quiet" not in first
    for flag, panel in (("--glob", 2), ("--batch-size", 3), ("--save-probs", 4), ("--json", 5), ("--ray-retries", 6)):
        end = at[panel + 1] if panel + 1 < len(at) else len(text)
        assert flag in text[at[panel]:end], flag


def test_workers_under_ray_from_the_command_line(tmp_path):
    pytest.importorskip("ray")
    from conftest import run_cli

    proc = run_cli("run", "x.mp4", "--out", tmp_path / "o", "--ray", "local", "--workers", "2")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --workers does not apply with --ray: each Ray actor decodes its videos in its own process "
        "(size the run with --ray-actors and --ray-cpus-per-actor)"]
    assert not Path(tmp_path / "o").exists()
