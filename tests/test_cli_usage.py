"""Usage mistakes caught by the parser (a value of the wrong type, an unknown flag, a missing argument) are one
line ``error: ...`` and exit 2, like every other usage error; help still prints and exits 0."""

from __future__ import annotations

from conftest import run_cli


def test_parser_errors_are_one_line():
    for args, needle in ((("run", "x.mp4", "--out", "o", "--fps", "abc"), "--fps"),
                         (("run", "x.mp4", "--out", "o", "--nope"), "--nope"),
                         (("run",), "inputs"),
                         (("eval", "--task"), "--task")):
        proc = run_cli(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_help_and_no_arguments_still_show_help():
    for args in ((), ("--help",), ("run", "--help"), ("weights",)):
        proc = run_cli(*args)
        assert proc.returncode == 0, (args, proc.stderr)
        assert "Usage" in proc.stdout and not proc.stderr.strip()
