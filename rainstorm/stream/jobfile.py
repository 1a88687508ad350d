"""Loading a job file: plain Python that defines ``stages``, imported with ``rainstorm.args`` set.

Every problem is one clear line (a :class:`JobError`) the CLI can print as is: a syntax error with its
line, an exception raised while the file runs, a missing / empty / wrongly typed ``stages``.
"""

from __future__ import annotations

import hashlib
import sys
import types
from collections.abc import Mapping

from rainstorm.stream import operators
from rainstorm.stream.operators import OPERATOR_TYPES, Args, Operator, error_line


class JobError(ValueError):
    """The job file cannot be used; the message is one line naming the file."""


def load_job(source: str | bytes, args: Mapping[str, str] | None = None, filename: str = "job.py") -> list[Operator]:
    """Run a job file's text as a fresh module and return its ``stages`` list.

    ``args`` (the submit's ``--arg NAME=VALUE`` pairs) are visible to the file through the shared
    ``rainstorm.args`` object while it is imported; afterwards every module-level name bound to that
    object is rebound to a private copy, so functions that read ``args`` at run time keep this job's
    values even if another job is loaded into the same process later."""
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JobError(f"{filename}: not UTF-8 text (byte {exc.start})") from None
    try:
        code = compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f"{filename}:{exc.lineno}" if exc.lineno else filename
        raise JobError(f"{where}: syntax error: {exc.msg}") from None
    except ValueError as exc:   # e.g. NUL bytes
        raise JobError(f"{filename}: cannot compile: {exc}") from None
    mine = Args(args or {})
    name = "rainstorm_job_" + hashlib.sha1(source.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    module = types.ModuleType(name)
    module.__file__ = filename
    shared = operators.args
    shared._set(mine)
    sys.modules[name] = module   # for dataclasses and friends while the file runs
    try:
        exec(code, module.__dict__)
    except (Exception, SystemExit) as exc:
        line = _job_line(exc, filename)
        raise JobError(f"{filename}{line}: error while loading: {error_line(exc)}") from None
    finally:
        sys.modules.pop(name, None)
    for k, v in list(module.__dict__.items()):
        if v is shared:
            module.__dict__[k] = mine
    return check_stages(module.__dict__.get("stages", _MISSING), filename)


_MISSING = object()


def _job_line(exc: BaseException, filename: str) -> str:
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f":{line}" if line else ""


def check_stages(stages: object, filename: str = "job.py") -> list[Operator]:
    """``stages`` must be a non-empty list (or tuple) of operators."""
    names = "Transform, FilteredTransform or AggregateByKey"
    if stages is _MISSING:
        raise JobError(f"{filename}: defines no `stages` (set stages = [{names}, ...])")
    if not isinstance(stages, list | tuple):
        raise JobError(f"{filename}: `stages` must be a list of operators, not {type(stages).__name__}")
    if not stages:
        raise JobError(f"{filename}: `stages` is empty (add at least one {names})")
    for i, op in enumerate(stages):
        if not isinstance(op, OPERATOR_TYPES):
            raise JobError(f"{filename}: stages[{i}] is {type(op).__name__}, expected {names}")
    return list(stages)
