"""The launcher that ``tficon batch --processes N`` starts: accelerate's ``launch`` (torchrun underneath), run so
that a dead process reads as one line instead of torchrun's error report.

Run as ``python -m tficon.run.launcher <accelerate launch arguments>``. When a process fails, torchrun raises a
``ChildFailedError`` whose report (a traceback through the launcher, then a framed table of failures) ran to some
44 lines, and its agent logs each failure again. Here the agent's own log lines are silenced, the error is caught,
and the failed process is named on one line; the exit code is the failed process's own (1: a sample failed), or
128 + the signal that ended it (137 for a ``kill -9``), as shells report it. ``tficon.run.processes`` adds that a
re-run resumes.
"""

from __future__ import annotations

import logging
import signal
import sys

__all__ = ["describe_failure", "exit_code", "main"]


def describe_failure(rank: int, exitcode: int) -> str:
    """One line naming a failed process: ``exitcode`` as torchrun reports it (negative: ended by that signal)."""
    if exitcode < 0:
        try:
            how = f"was ended by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was ended by signal {-exitcode}"
    else:
        how = f"exited with code {exitcode}"
    return f"tficon batch: process {rank} {how}"


def exit_code(exitcode: int) -> int:
    """The launcher's exit code for a failed process: its own, or 128 + the signal that ended it."""
    return 128 - exitcode if exitcode < 0 else exitcode


def main(argv: list[str] | None = None) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # The agent logs every failure (and each worker it stops) at WARNING/ERROR; the lines below replace them.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    args = launch_command_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        launch_command(args)
    except ChildFailedError as error:
        # The first observed failure is the cause (torchrun's "root cause"); the agent then stops the others with
        # SIGTERM, which it reports as failures too: name the cause, and the others only as stopped.
        rank, first = error.get_first_failure()
        others = len(error.failures) - 1
        stopped = f" (the other process{'es were' if others > 1 else ' was'} stopped)" if others else ""
        print(describe_failure(rank, first.exitcode) + stopped, file=sys.stderr)
        return exit_code(first.exitcode)
    except SystemExit as stop:  # accelerate exits 130 on Ctrl-C and 128 + n on a signal it received
        return stop.code if isinstance(stop.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
