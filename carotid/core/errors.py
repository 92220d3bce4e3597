"""The one exception type for mistakes a user can fix, and the CLI wrapper that reports it.

Every `carotid-*` command runs through `run_cli`: a `UserError` becomes one line
`error: <what> — <how to fix>` on stderr and exit status 2; Ctrl-C outside training (where it
checkpoints and stops) one line and exit status 130, as shells report SIGINT; anything else is a
bug or a fault and keeps its traceback (exit status 1).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence

from carotid.core import console

INTERRUPTED = "interrupted (Ctrl-C): stopped, nothing half-written was left"
INTERRUPTED_LATE = "interrupted (Ctrl-C), noticed only at the end: what was written is complete"


class UserError(Exception):
    """A mistake in the user's input (a path, a sheet, an option, a model file)."""

    def __init__(self, what: str, fix: str | None = None):
        super().__init__(what if fix is None else f"{what} — {fix}")
        self.what = what
        self.fix = fix


class StopTraining(Exception):
    """Training stopped early on purpose (a signal or a non-finite loss); carries the exit status."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _shutdown_distributed() -> None:
    # Leaving a process group alive makes torch print a warning after our one-line error. Without
    # torch.distributed loaded there is no group, and importing torch here would slow every argument error.
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return
    try:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort while already exiting
        pass


def _exit_at_once(signum, frame) -> None:
    if _is_main_rank():
        print(INTERRUPTED, file=sys.stderr, flush=True)
    os._exit(130)  # nothing is open for writing before run_cli starts


def _importing() -> bool:
    """Whether a module is being imported: Python sets `__spec__._initializing` while it runs one."""
    for module in list(sys.modules.values()):
        if getattr(getattr(module, "__spec__", None), "_initializing", False):
            return True
    return False


_pending = {"interrupt": False}  # a Ctrl-C raised but not yet reported: Python drops one raised inside __del__


def interrupt_pending() -> bool:
    """Whether a Ctrl-C was raised and may have been swallowed (a KeyboardInterrupt that lands in a finaliser,
    e.g. a zip file closed by the garbage collector, is printed as 'Exception ignored' and lost)."""
    return _pending["interrupt"]


def _interrupt(signum, frame) -> None:
    # A KeyboardInterrupt raised inside an import can cross torch's C++ start-up code, which then aborts
    # ("terminate called after throwing an instance of 'python_error'", SIGABRT). Imports write nothing,
    # so stopping at once there is as clean as unwinding, and elsewhere unwinding cleans up.
    if _importing():
        _exit_at_once(signum, frame)
    _pending["interrupt"] = True
    raise KeyboardInterrupt


def quiet_ctrl_c_until_run() -> None:
    """Before `run_cli` starts (imports), Ctrl-C exits at once with one line and status 130."""
    signal.signal(signal.SIGINT, _exit_at_once)


# How libraries that write files in native code report a full disk in their message, with no errno:
# safetensors ("IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })").
DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "StorageFull", "QuotaExceeded")


def disk_full_error(err: BaseException) -> OSError | None:
    """The full disk (or quota) `err` reports, as an OSError, whether it is one (ENOSPC, EDQUOT) or a library's
    own exception that says so in its message; None for any other error."""
    if isinstance(err, OSError):
        return err if err.errno in (errno.ENOSPC, errno.EDQUOT) else None
    if isinstance(err, Exception) and any(word in str(err) for word in DISK_FULL_WORDS):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


def _full_stdout() -> str | None:
    """Where standard output goes, when that is what is full: /dev/full, or a file on a full disk."""
    try:
        target = os.readlink(f"/proc/self/fd/{sys.stdout.fileno()}")
        full = target == "/dev/full" or (os.path.isfile(target) and os.statvfs(target).f_bavail == 0)
    except (OSError, ValueError, AttributeError):  # not Linux, or stdout is no file (a test's capture)
        return None
    if full:
        _silence_stdout()  # the unwritten output would fail again at exit
    return target if full else None


def _full_message(err: OSError) -> str:
    """A full disk, or (no file named) a standard output that cannot take the output: `> /dev/full`."""
    target = None if err.filename else _full_stdout()
    if target == "/dev/full":
        return (
            f"error: standard output cannot be written ({err.strerror}: it goes to {target}) — send it to a "
            "terminal, a file on a disk with space or /dev/null, and run the command again"
        )
    where = f" writing {err.filename or target}" if err.filename or target else ""
    return (
        f"error: the disk is full ({err.strerror}{where}) — free space on it and run the command again; "
        "files written before are complete (each is written whole or not at all)"
    )


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no file (a test's capture): nothing to flush into the pipe
        pass


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)`; turn `UserError` / `StopTraining` / Ctrl-C into a message and an exit status."""
    if signal.getsignal(signal.SIGINT) is _exit_at_once:
        signal.signal(signal.SIGINT, _interrupt)  # from here KeyboardInterrupt cleans up
    try:
        with warnings.catch_warnings():  # the routing below ends with the command (in-process callers, tests)
            console.route_warnings()
            status = main(argv) or 0
            sys.stdout.flush()  # a stdout that cannot take the output (> /dev/full) fails here, not at exit
    except UserError as err:
        if _is_main_rank():
            print(f"error: {err}", file=sys.stderr, flush=True)
        status = 2
    except StopTraining as stop:
        if _is_main_rank():
            print(str(stop), file=sys.stderr, flush=True)
        status = stop.exit_status
    except BrokenPipeError:
        # stdout closed (`carotid-train … | head`): stop quietly, as Unix tools do, with SIGPIPE's status. Python
        # would report the pipe again when it flushes stdout at exit, so stdout goes to /dev/null first.
        _silence_stdout()
        status = 128 + signal.SIGPIPE
    except Exception as err:
        full = disk_full_error(err)
        if full is None:
            raise
        err = full
        if _is_main_rank():
            print(_full_message(err), file=sys.stderr, flush=True)
        status = 2
    except KeyboardInterrupt:
        # Whatever was being written is written atomically (carotid.core.files), and a new run directory is
        # removed (train.py), so stopping here leaves nothing half-written.
        if _is_main_rank():
            print(INTERRUPTED, file=sys.stderr, flush=True)
        status = 130
    else:
        if interrupt_pending():  # swallowed on the way: the work went on, but the user asked to stop
            if _is_main_rank():
                print(INTERRUPTED_LATE, file=sys.stderr, flush=True)
            status = 130
    _pending["interrupt"] = False
    for line in console.repeated_warnings():
        print(line, file=sys.stderr, flush=True)
    console.forget_warnings()
    _shutdown_distributed()
    return status
