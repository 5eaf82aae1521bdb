"""`mambadna` command line: parses arguments, builds a typed config, calls one
library function. No logic lives here.

Exit codes: 0 success; 2 bad input or usage (one line ``error: <file>: <problem>``,
or typer's usage message); 130 / 143 interrupted by SIGINT / SIGTERM.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading

import typer

from mambadna.cli import classify, embed, finetune, info, pretrain
from mambadna.errors import Interrupted, MambaDNAError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mambadna: DNA sequence models with Mamba (pretrain, finetune, classify, embed).")

for _command in (pretrain, info, finetune, classify, embed):
    _command.register(app)


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def main(argv=None) -> None:
    """Console-script entry point: one clear line and exit code 2 on bad input;
    usage errors are typer's own message and exit 2; 128 + signal on SIGINT/SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    for s in previous:
        signal.signal(s, _raise_interrupted)
    try:
        # standalone: typer itself reports usage errors (exit 2) and exits with the command's status
        app(args=argv, standalone_mode=True, prog_name="mambadna")
    except MambaDNAError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except Interrupted as e:
        typer.echo(f"interrupted ({e.name})", err=True)
        sys.exit(e.exit_code)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


if __name__ == "__main__":
    main()
