"""What kind of failure an exception is, for the one line `stardss` prints and its exit code.

    0  success
    2  user error: the input is wrong and the person can fix it (a config key, a data row, a
       missing model / tokenizer / file path, no usable rows, a Ray address that does not
       answer); the message names the key, file or row
    1  runtime failure: the input was fine but the run could not finish (a guard pool that
       cannot make progress, Ray Train workers that cannot restart, anything unforeseen)

Stage errors that mean "bad input" inherit the marker `UserError` (ConfigError, BadRow,
SourceError, EvalSetError, ...), so this primitive classifies by isinstance and never imports
a stage. Ray hands a worker's exception back wrapped (RayTaskError.cause, Ray Train's
WorkerGroupError.worker_failures, stardss.raytools.RemoteError's __cause__): a bad row found
by a Train worker is still the user's to fix, so the wrappers are searched for a UserError.
"""
from __future__ import annotations

from collections import deque
from typing import Iterator, Optional

USER = 2
RUNTIME = 1

# Built-in exceptions that are the user's to fix: a path that is not there (or not what it
# should be). Anything else built-in is a bug or a runtime failure: exit 1, type named.
_USER_BUILTINS = (FileNotFoundError, NotADirectoryError, IsADirectoryError)

# The kind word of the one line, by class name (no stage import needed); others fall back to
# the stage their class lives in (stardss.<stage>.module -> "<stage>").
_KINDS = {"ConfigError": "config", "PlacementError": "config", "BadRow": "data",
          "SourceError": "data", "ReportError": "report", "HttpError": "http",
          "FileNotFoundError": "file", "NotADirectoryError": "file",
          "IsADirectoryError": "file"}


class UserError(Exception):
    """Marker base of the errors a person fixes in their input (exit 2); a stage's error class
    adds it to its bases: `class BadRow(UserError, ValueError)`."""

    error_kind: Optional[str] = None
    """The word after "stardss:" in the printed line; None: taken from the class (see _KINDS)."""
    users_fault: bool = True
    """False on an instance whose cause lies elsewhere after all (e.g. an HttpError for a
    server that answered 500): the same one line, exit 1."""


class ModelNotFound(UserError, FileNotFoundError):
    """model.name_or_path / model.tokenizer (or an eval --model) names neither a folder nor a
    Hub id that can be loaded here."""

    error_kind = "model"


def _wrapped(err: BaseException) -> Iterator[BaseException]:
    """The exceptions `err` carries inside it: Ray's wrappers and the explicit cause chain."""
    cause = getattr(err, "cause", None)  # ray.exceptions.RayTaskError
    if isinstance(cause, BaseException):
        yield cause
    failures = getattr(err, "worker_failures", None)  # ray.train WorkerGroupError
    if isinstance(failures, dict):
        yield from (e for _, e in sorted(failures.items(), key=lambda kv: str(kv[0]))
                    if isinstance(e, BaseException))
    if err.__cause__ is not None:
        yield err.__cause__
    elif err.__context__ is not None and not err.__suppress_context__:
        yield err.__context__


def _is_ray_wrapper(err: BaseException) -> bool:
    # RayTaskError.as_instanceof_cause() makes a class that is both RayTaskError and the
    # remote exception's class; its str() is the remote traceback, so report its cause instead.
    return isinstance(getattr(err, "cause", None), BaseException)


def _is_ray_address_error(err: BaseException) -> bool:
    """ray.init could not reach the cluster at ray.address (Ray raises ConnectionError)."""
    if not isinstance(err, ConnectionError):
        return False
    tb = err.__traceback__
    while tb is not None:
        if "/ray/_private/" in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
            return True
        tb = tb.tb_next
    return False


def _is_user(err: BaseException) -> bool:
    if _is_ray_wrapper(err):
        return False
    if isinstance(err, UserError):
        return err.users_fault
    return isinstance(err, _USER_BUILTINS) or _is_ray_address_error(err)


def user_error_in(err: BaseException) -> Optional[BaseException]:
    """The first user error found in `err` or the exceptions wrapped inside it (breadth first,
    outermost first), or None."""
    seen: set[int] = set()
    queue = deque([err])
    while queue:
        e = queue.popleft()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if _is_user(e):
            return e
        queue.extend(_wrapped(e))
    return None


def exit_code_of(err: BaseException) -> int:
    """2 for a user error (also one wrapped by Ray), 1 for anything else."""
    return USER if user_error_in(err) is not None else RUNTIME


def _kind(err: BaseException, user: bool) -> str:
    if _is_ray_address_error(err):
        return "ray"
    if isinstance(err, UserError) and err.error_kind:
        return err.error_kind
    for cls in type(err).__mro__:
        if cls.__name__ in _KINDS:
            return _KINDS[cls.__name__]
    parts = type(err).__module__.split(".")
    if user and parts[0] == "stardss" and len(parts) > 2:
        return parts[1]
    return "input" if user else "runtime"


def _message(err: BaseException) -> str:
    """str(err) on one line: the lines of a multi-line message joined, a remote traceback that
    Ray appended left out."""
    lines = []
    for line in str(err).splitlines():
        if line.strip().startswith("Traceback (most recent call last)"):
            break
        if line.strip():
            lines.append(line.strip())
    return "; ".join(lines)


def one_line(err: BaseException) -> str:
    """"stardss: <kind> error: <message>" for `err`: the user error inside it when there is one
    (what the person has to fix), else the failure itself with its type named."""
    user = user_error_in(err)
    if user is not None:
        msg = _message(user) or type(user).__name__
        if _is_ray_address_error(user):
            msg = f"ray.address: cannot connect: {msg}"
        return f"stardss: {_kind(user, True)} error: {msg}"
    msg = _message(err)
    stardss_own = type(err).__module__.startswith("stardss.")
    if not stardss_own or not msg:  # a bare KeyError('x') says nothing without its type
        msg = f"{type(err).__name__}: {msg}" if msg else type(err).__name__
    return f"stardss: {_kind(err, False)} error: {msg}"
