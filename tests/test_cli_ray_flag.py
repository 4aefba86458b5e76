"""``avseg run ... --ray`` with no address is ``--ray local``; an address after it is kept."""

from __future__ import annotations

from avsegcli.cli import bare_ray_flag


def test_bare_ray_means_local():
    assert bare_ray_flag(["avseg", "run", "v.mp4", "--out", "d", "--ray"])[-1] == "local"
    assert bare_ray_flag(["avseg", "run", "--ray", "v.mp4", "--out", "d"]) == ["avseg", "run", "--ray", "local", "v.mp4", "--out", "d"]
    assert bare_ray_flag(["avseg", "run", "v.mp4", "--ray", "--ray-actors", "2"])[3:5] == ["--ray", "local"]


def test_addresses_are_kept():
    for addr in ("local", "auto", "10.0.0.1:6379", "head-node:6379", "ray://head:10001"):
        argv = ["avseg", "run", "v.mp4", "--ray", addr, "--out", "d"]
        assert bare_ray_flag(argv) == argv
    assert bare_ray_flag(["avseg", "eval", "--ray"]) == ["avseg", "eval", "--ray"]  # only `run` has --ray
