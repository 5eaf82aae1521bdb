"""`mambadna` command line: parses arguments, builds a typed config, calls one
library function. No logic lives here.

Exit codes: 0 success; 2 bad input or usage (one line ``error: <file>: <problem>``,
or typer's usage message); 1 the system failed us (disk full, I/O error: one line
``error: <file>: <reason>``); 130 / 143 interrupted by SIGINT / SIGTERM (training
stops at the next step boundary with a checkpoint and says how to resume).
Output locks taken by a command are released when it ends, whatever the outcome.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading

import typer

from mambadna.cli import attribute, classify, convert, embed, finetune, info, ism, pretrain
from mambadna.cli.invocation import set_args
from mambadna.errors import Interrupted, MambaDNAError
from mambadna.io.files import release_output_locks

# rich_markup_mode=None: help texts are plain text, so defaults written "[like this]" stay visible
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="mambadna: DNA sequence models with Mamba (pretrain, finetune, classify, embed).")

for _command in (pretrain, info, finetune, classify, embed, convert, ism, attribute):
    _command.register(app)


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def main(argv=None) -> None:
    """Console-script entry point: one clear line and exit code 2 on bad input;
    usage errors are typer's own message and exit 2; 128 + signal on SIGINT/SIGTERM."""
    set_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    for s in previous:
        signal.signal(s, _raise_interrupted)
    try:
        # standalone: typer itself reports usage errors (exit 2) and exits with the command's status
        app(args=argv, standalone_mode=True, prog_name="mambadna")
    except MambaDNAError as e:
        _fail(getattr(e, "line", None) or f"error: {e}", e, getattr(e, "exit_code", 2))
    except Interrupted as e:
        _fail(f"interrupted ({e.name})" + (f": {e.detail}" if e.detail else ""), e, e.exit_code)
    except OSError as e:  # disk full, I/O error, permission lost mid-run: one line, not a traceback
        where = e.filename if e.filename is not None else None
        why = e.strerror or str(e)
        _fail(f"error: {where}: {why}" if where else f"error: {why}", e, 1)
    finally:
        release_output_locks()
        for s, h in previous.items():
            signal.signal(s, h)


def _fail(line: str, exc: BaseException, code: int) -> None:
    """Print the one error line (once per run, also under torchrun) and exit."""
    from mambadna.components.distributed import report_failure

    report_failure(line, exc)
    sys.exit(code)


if __name__ == "__main__":
    main()
