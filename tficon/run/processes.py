"""``tficon batch --processes N``: the command runs itself again under accelerate's launcher, with N processes on
this machine, and keeps them tied to itself: a Ctrl-C is reported once (by the command, not by each process), a
kill of the command (SIGTERM, SIGHUP) reaches the launcher, which stops its processes, and on Linux the launcher
gets SIGTERM when the command dies, even by ``kill -9``. The launcher runs through ``tficon.run.launcher``, which
names a failed process in one line instead of torchrun's error report; a failed launch says that a re-run resumes."""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["launch_processes", "launched_by_processes", "LAUNCHED_ENV"]

#: Set in the environment of the processes that ``--processes N`` starts.
LAUNCHED_ENV = "TFICON_LAUNCHED_BY_PROCESSES"
FORWARDED = (signal.SIGTERM, signal.SIGHUP) if hasattr(signal, "SIGHUP") else (signal.SIGTERM,)


def launched_by_processes() -> bool:
    """Whether this process is one that ``--processes N`` started (it leaves messages for all to the command)."""
    return bool(os.environ.get(LAUNCHED_ENV))


def launch_processes(processes: int, argv: list[str]) -> int:
    """Run this very command under accelerate's launcher with ``processes`` processes on this machine (one per GPU
    when there are GPUs; CPU processes in a gloo group otherwise); the processes skip this step
    (torchrun sets WORLD_SIZE). Returns the launcher's exit code."""
    import socket
    import subprocess

    with socket.socket() as probe:  # a free port for the process group's rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "tficon.run.launcher", "--multi_gpu", "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        "-m", "tficon", *argv,
    ]  # fmt: skip
    print(f"tficon batch: {processes} processes via accelerate launch", flush=True)
    # The processes stay quiet on Ctrl-C (they get it too): this command says it once.
    child = subprocess.Popen(command, env={**os.environ, LAUNCHED_ENV: "1"}, preexec_fn=_end_with_parent)
    # A kill of this command (SIGTERM, a closed terminal) reaches the launcher, which stops its processes.
    forward = {sig: signal.signal(sig, lambda signum, _: child.send_signal(signum)) for sig in FORWARDED}
    try:
        code = child.wait()
    except KeyboardInterrupt:  # let the processes stop, then report
        child.wait()
        raise
    finally:
        for sig, handler in forward.items():
            signal.signal(sig, handler)
    if code not in (0, 130):  # 130: a Ctrl-C, which the command reports; else a failed sample or a dead process
        print(f"tficon batch: the processes ended with exit code {code}; finished samples are kept and a re-run "
              "resumes", file=sys.stderr)  # fmt: skip
    return code


def _end_with_parent() -> None:
    """In the launcher, before it starts: on Linux, get SIGTERM when this command dies (even by ``kill -9``), so
    that the launcher and its processes never outlive it."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: a kill -9 of this command leaves the processes to finish
        pass
