"""Small helpers shared by the workflows: atomic writes, exclusive claims, and one-line reports of a user's mistake."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from monai.utils import str2bool

__all__ = ["USER_ERRORS", "atomic_write", "attach_time_limit", "claim", "flag", "report_user_errors", "user_error"]

#: What a user's input or setting raises (a missing, unreadable or implausible file; a bad value; an existing
#: output): reported as one line. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def flag(value: bool | str, name: str) -> bool:
    """A yes/no setting as a bool. The command line hands ``--overwrite false`` over as the string ``"false"``,
    which ``bool()`` reads as True; anything but a bool or a yes/no word is refused, naming the setting."""
    if isinstance(value, bool):
        return value
    try:
        return str2bool(str(value))
    except ValueError:
        raise ValueError(f"{name} must be true or false, got {value!r}.") from None


def attach_time_limit(engine, seconds: int | str, name: str = "time_limit_s") -> None:
    """Stop ``engine`` (an ignite engine) ``seconds`` after this call, checked after every iteration (ignite's
    ``TimeLimit``: it terminates the run, so COMPLETED still fires and the final checkpoint is written); 0: no limit.
    A value that is not a whole number of seconds ≥ 0 is refused naming the setting (ignite's own errors do not)."""
    from ignite.engine import Events
    from ignite.handlers import TimeLimit

    text = str(seconds).strip()
    if isinstance(seconds, bool) or not text.isdigit():
        raise ValueError(f"{name} must be a whole number of seconds, 0 or more (0: no limit), got {seconds!r}.")
    if int(text) > 0:
        engine.add_event_handler(Events.ITERATION_COMPLETED, TimeLimit(int(text)))


GUIDANCE_MODES = {"auto": "rendered", "rendered": "rendered", "all": "all", "off": "off"}


def guidance_mode(value: bool | str, name: str = "drr_guidance#enabled") -> str:
    """Which cases a guided sampler guides: ``"all"`` (true), ``"off"`` (false) or ``"rendered"`` (``auto``: the
    cases whose views the pipeline rendered from a CT input, i.e. exact DRRs; radiographs are not guided)."""
    text = str(value).strip().lower()
    if text in GUIDANCE_MODES:
        return GUIDANCE_MODES[text]
    try:
        return "all" if flag(value, name) else "off"
    except ValueError:
        raise ValueError(
            f"{name} must be auto (guide views rendered from a CT, not radiographs), true or false, got {value!r}."
        ) from None


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None], overwrite: bool = False) -> None:
    """Write ``path`` through ``writer(temp_path)`` in the same folder, fsync, then rename over it.

    A crash leaves either the old file or the new one, never a partial file; an existing file is kept unless
    ``overwrite``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite it (pass --overwrite true to replace it).")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix="".join(path.suffixes))
    os.close(fd)
    try:
        writer(tmp)
        # mkstemp creates 0600 files; give the result the permissions of an ordinary new file (umask applies).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        # The rename itself is durable only once the folder's entry is on disk.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def claim(path: str | os.PathLike, content: str, overwrite: bool = False) -> None:
    """Create ``path`` with ``content`` exclusively (``O_CREAT | O_EXCL``): of two runs started at once, one wins and
    the other gets ``FileExistsError``; with ``overwrite`` an existing file is replaced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o666)
    except FileExistsError:
        raise FileExistsError(
            f"{path} exists: another run wrote here or is writing now; refusing to overwrite it (pass --overwrite "
            "true to replace it, or choose another --output_dir)."
        ) from None
    with os.fdopen(fd, "w") as file:
        file.write(content)


def user_error(err: BaseException) -> BaseException | None:
    """The user's mistake behind ``err``, or ``None`` for a bug.

    MONAI's config resolver wraps an expression's error in ``RuntimeError("Failed to evaluate ConfigExpression")``
    and ``Compose`` in ``RuntimeError("applying transform ...")``; the error that names the input is at the end of
    the ``__cause__`` chain.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, USER_ERRORS):
            return err
        err = err.__cause__
    return None


def report_user_errors(debug: bool | str = False) -> None:
    """Make a user's mistake end the run with one line, ``error: <what failed, on which input, what to do>``, as the
    last thing printed (exit code 1), instead of a config-resolver traceback; bugs keep their traceback, and so does
    everything with ``debug`` (``--debug true``). Installed first in every workflow's ``initialize``."""
    debug = debug if isinstance(debug, bool) else str2bool(str(debug))
    previous = getattr(sys.excepthook, "xray2ct_previous", sys.excepthook)

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        mistake = None if debug else user_error(value)
        if mistake is None:
            previous(kind, value, tb)
        else:
            sys.stderr.flush()
            print(f"error: {mistake}", file=sys.stderr, flush=True)

    hook.xray2ct_previous = previous  # installing twice (several workflows in one process) keeps one hook
    sys.excepthook = hook
