"""Options every ``avseg`` command shares: one definition of ``-v/--verbose`` and ``-q/--quiet``.

Use them as parameter annotations so that every command spells and documents them the same way::

    from avsegcli.cli.common import Quiet, Verbose, set_verbosity

    def cmd(..., verbose: Verbose = False, quiet: Quiet = False) -> None:
        set_verbosity(verbose, quiet)

Meaning, on every command:

* ``--quiet``: no progress display and no result table or summary line; errors and warnings still go to stderr
  (and ``--json`` output still goes to stdout).
* ``--verbose``: more detail on stderr: what was loaded and decided (model, device, inputs), per-input notes, and
  on an error the full chain of causes and the traceback after the one-line ``error:`` message.

Giving both is a usage error (exit code 2). Nothing here imports torch.
"""

from __future__ import annotations

from typing import Annotated

import typer

_VERBOSE_HELP = "More detail on stderr (model, inputs, decisions; tracebacks on errors)."
_QUIET_HELP = "No progress display and no table (errors still print)."
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help=_VERBOSE_HELP)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help=_QUIET_HELP)]
_OFFLINE_HELP = "Never touch the network: a weights name must already be in the cache (also AVSEG_OFFLINE=1)."
Offline = Annotated[bool, typer.Option("--offline", help=_OFFLINE_HELP)]
WEIGHTS_NAMES = "a name from `avseg weights list` (fetched once into the cache)"


def offline_in_panel(panel: str) -> type:
    """:data:`Offline` listed under the help panel ``panel``."""
    return Annotated[bool, typer.Option("--offline", help=_OFFLINE_HELP, rich_help_panel=panel)]


def set_offline(offline: bool) -> None:
    """``--offline``: this process and its children fetch nothing (``AVSEG_OFFLINE=1``)."""
    if offline:
        from avsegcli.hub.resolve import set_offline as hub_offline

        hub_offline(True)


def verbosity_in_panel(panel: str) -> tuple[type, type]:
    """``(Verbose, Quiet)`` as above, listed under the help panel ``panel`` (``rich_help_panel``) of a command that
    groups its options."""
    return (Annotated[bool, typer.Option("--verbose", "-v", help=_VERBOSE_HELP, rich_help_panel=panel)],
            Annotated[bool, typer.Option("--quiet", "-q", help=_QUIET_HELP, rich_help_panel=panel)])

#: the level the current command asked for: -1 quiet, 0 normal, 1 verbose
_LEVEL = {"level": 0}


def set_verbosity(verbose: bool, quiet: bool) -> int:
    """Record the command's level (read by :func:`is_verbose` and the error handler); both flags -> usage error."""
    from avsegcli.errors import AvsegError

    if verbose and quiet:
        raise AvsegError("--verbose and --quiet contradict each other: give one")
    _LEVEL["level"] = 1 if verbose else (-1 if quiet else 0)
    if quiet:  # no download bar (nor on-the-fly export spinner) either
        from avsegcli.hub.download import show_progress_bars

        show_progress_bars(False)
    return _LEVEL["level"]


def is_verbose() -> bool:
    return _LEVEL["level"] > 0


def is_quiet() -> bool:
    return _LEVEL["level"] < 0


def detail(message: str) -> None:
    """Print ``message`` on stderr when --verbose was given (plain text, no markup)."""
    if is_verbose():
        from rich.console import Console

        Console(stderr=True, highlight=False, soft_wrap=True).print(message, markup=False)


def print_fields(title: str, rows: list[tuple[str, str]]) -> None:
    """A result as a two-column table (name, value) on stdout: ``avseg weights info``, ``avseg export``."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
