"""`mambadna` command line: parses arguments, builds a typed config, calls one
library function. No logic lives here."""
from __future__ import annotations

import importlib
import logging
import sys

import typer

from mambadna.errors import MambaDNAError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="mambadna: DNA sequence models with Mamba (pretrain, finetune, classify, embed).")

# each module defines register(app) and adds its commands
_COMMAND_MODULES = ("pretrain", "info", "finetune", "classify", "embed")
for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"mambadna.cli.{_name}")
    except ModuleNotFoundError as _e:  # a command module not written yet
        if _e.name != f"mambadna.cli.{_name}":
            raise
        continue
    _mod.register(app)


def main(argv=None) -> None:
    """Console-script entry point: one clear line and exit code 2 on bad input."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        app(args=argv, standalone_mode=False)
    except MambaDNAError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors come through here too
        import click

        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
