"""Loading job files: stages come back; args are visible; every mistake is one clear line."""

from __future__ import annotations

import pytest

from rainstorm.stream import AggregateByKey, FilteredTransform, JobError, Transform, load_job

GREP = """
from rainstorm.stream import FilteredTransform, args

pattern = args["pattern"]
stages = [FilteredTransform(lambda k, v: args["pattern"] in v)]
"""


def test_loads_stages_with_args_at_import_and_run_time() -> None:
    stages = load_job(GREP, {"pattern": "err"}, "grep.py")
    assert len(stages) == 1 and isinstance(stages[0], FilteredTransform)
    assert stages[0].predicate("k", "an error") and not stages[0].predicate("k", "fine")


def test_each_loaded_job_keeps_its_own_args() -> None:
    a = load_job(GREP, {"pattern": "aaa"})
    b = load_job(GREP, {"pattern": "bbb"})
    assert isinstance(a[0], FilteredTransform) and isinstance(b[0], FilteredTransform)
    assert a[0].predicate("k", "xaaa") and not a[0].predicate("k", "xbbb")
    assert b[0].predicate("k", "xbbb")


def test_all_operator_kinds_and_tuple_stages_and_bytes() -> None:
    src = b"""
from rainstorm.stream import AggregateByKey, FilteredTransform, Transform
from dataclasses import dataclass

@dataclass
class Row:
    word: str

stages = (Transform(lambda k, v: (Row(v).word, 1)), FilteredTransform(bool), AggregateByKey(lambda k, v: k, "count"))
"""
    stages = load_job(src)
    assert [type(s) for s in stages] == [Transform, FilteredTransform, AggregateByKey]


def one_line(exc: pytest.ExceptionInfo[JobError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("src,expected", [
    ("stages = [\n", "job.py:1: syntax error"),
    ("x = 1\nstages = [Transform(]\n", "job.py:2: syntax error"),
    ("x = 1\n", "defines no `stages`"),
    ("stages = []\n", "`stages` is empty"),
    ("stages = 'Transform'\n", "`stages` must be a list of operators, not str"),
    ("from rainstorm.stream import Transform\nstages = [Transform(len), print]\n",
     "stages[1] is builtin_function_or_method, expected Transform, FilteredTransform or AggregateByKey"),
    ("import nonexistent_module_xyz\n", "job.py:1: error while loading: ModuleNotFoundError"),
    ("from rainstorm.stream import args\n\nn = args['missing']\n", "job.py:3: error while loading: KeyError"),
    ("from rainstorm.stream import Transform\nstages = [Transform(3)]\n",
     "job.py:2: error while loading: TypeError: Transform(fn): fn must be a function"),
    ("import sys\nsys.exit(3)\n", "error while loading: SystemExit: 3"),
])
def test_mistakes_are_one_clear_line(src: str, expected: str) -> None:
    with pytest.raises(JobError) as exc:
        load_job(src)
    assert expected in one_line(exc)


def test_non_utf8_and_nul_bytes() -> None:
    with pytest.raises(JobError) as exc:
        load_job(b"stages = ['\xff']")
    assert "not UTF-8" in one_line(exc)
    with pytest.raises(JobError) as exc:
        load_job("stages = 1\x00")
    assert one_line(exc).startswith("job.py:")


def test_job_error_is_a_value_error() -> None:
    assert issubclass(JobError, ValueError)
