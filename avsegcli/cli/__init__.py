"""The ``avseg`` command line: thin Typer commands mapping flags one to one onto library calls."""

from __future__ import annotations

import re
import sys
import traceback

import typer
from rich.console import Console

from avsegcli import __version__
from avsegcli.cli.common import is_verbose
from avsegcli.errors import AvsegError

app = typer.Typer(
    name="avseg",
    help="Find and segment the objects that make sound in a video (AVSegFormer).",
    no_args_is_help=True,
    add_completion=True,  # avseg --install-completion / --show-completion (bash, zsh, fish, powershell)
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        print(f"avseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """avseg: audio-visual segmentation of sounding objects."""


def _register() -> None:
    """Add the commands to :data:`app` (once per process: :func:`main` calls it)."""
    # lazy: the command modules are loaded when the command line runs, not when `avsegcli.cli` is imported
    from avsegcli.cli import eval_cmd, export_cmd, pretrain_cmd, render_cmd, run_cmd, synth_cmd, train_cmd, weights_cmd

    app.command("run")(run_cmd.run)
    app.command("eval")(eval_cmd.evaluate)
    app.command("render")(render_cmd.render)
    app.command("export")(export_cmd.export)
    app.command("synth")(synth_cmd.synth)
    app.command("pretrain-audio")(pretrain_cmd.pretrain_audio)
    app.command("train")(train_cmd.train)
    app.add_typer(weights_cmd.app, name="weights")


_RAY_ADDRESS = re.compile(r"^(local|auto|(ray://)?[^\s/]+:\d+)$")


def bare_ray_flag(argv: list[str]) -> list[str]:
    """``avseg run ... --ray`` with no address means a local Ray instance: insert ``local`` when the token after
    ``--ray`` is not an address (``local``, ``auto``, ``host:port``, ``ray://host:port``) or is missing."""
    if len(argv) < 2 or argv[1] != "run" or "--ray" not in argv:
        return argv
    i = argv.index("--ray")
    if i + 1 < len(argv) and _RAY_ADDRESS.match(argv[i + 1]):
        return argv
    return argv[:i + 1] + ["local"] + argv[i + 1:]


try:  # typer 0.29 parses with its own copy of click
    from typer._click import exceptions as cx
except ImportError:  # pragma: no cover - older typer on plain click
    from click import exceptions as cx


def main() -> None:
    _register()
    sys.argv = bare_ray_flag(sys.argv)
    try:  # not standalone: click's usage errors come here and are printed as one line
        code = app(prog_name="avseg", standalone_mode=False)  # same name (and completion variable) under `python -m`
    except cx.NoArgsIsHelpError as err:  # `avseg` or `avseg weights` alone: the help, as before
        print(err.ctx.get_help() if err.ctx else "")
        sys.exit(0)
    except cx.UsageError as err:  # a bad flag value, a missing argument: `error: <reason>`, exit 2
        where = f"avseg {err.ctx.info_name}: " if err.ctx is not None and err.ctx.info_name not in (None, "avseg") else ""
        hint = " (see --help)" if err.ctx is not None else ""
        err_console.print(f"error: {where}{' '.join(err.format_message().split())}{hint}", markup=False)
        sys.exit(2)
    except typer.Abort:  # end of input at a prompt
        sys.exit(130)
    except AvsegError as err:
        err_console.print(f"error: {err}", markup=False)
        if is_verbose():  # -v: the chain of causes and where it was raised
            err_console.print("".join(traceback.format_exception(err)).rstrip(), markup=False)
        sys.exit(err.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
