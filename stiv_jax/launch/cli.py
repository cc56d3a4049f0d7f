"""How the command-line entry points fail: the first error once, in one line, and a clean exit.

``run(main)`` replaces ``absl.app.run(main)``. An exception escaping ``main`` prints
``error: <Type>: <first line>`` to stderr and ends the process with status 1 at once (``os._exit`` after
flushing): the interpreter's normal shutdown would otherwise let orbax's asyncio checkpoint threads, grain's
prefetch threads and tensorboardX's writer thread run while modules are torn down, printing dozens of
``Event loop is closed`` and hundreds of ``ImportError: sys.meta_path is None`` lines below the one that matters.
Set ``STIV_TRACE=1`` (or pass ``--trace``) for the full traceback.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

TRACE_ENV = "STIV_TRACE"


def one_line(err: BaseException) -> str:
    """``Type: first line of the message`` (the message's other lines follow only with the trace)."""
    message = str(err).strip()
    first = message.splitlines()[0] if message else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def run(main: Callable, argv: list[str] | None = None) -> None:
    """``absl.app.run(main)`` with the failure handling of the module doc."""
    from absl import app
    argv = list(sys.argv if argv is None else argv)
    trace = os.environ.get(TRACE_ENV, "") not in ("", "0") or "--trace" in argv
    argv = [a for a in argv if a != "--trace"]

    def guarded(args):
        try:
            return main(args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as err:  # noqa: BLE001  (every failure ends the same way)
            if trace:
                traceback.print_exc()
            sys.stderr.write(f"error: {one_line(err)}\n" + ("" if trace else f"  (full trace: {TRACE_ENV}=1)\n"))
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)

    app.run(guarded, argv=argv)
