import pytest

from hydfs.names import BadName, check_name


@pytest.mark.parametrize("name", ["a", "logs/job-1/task-0.log", "x.csv", "ü" * 100])
def test_good(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name,why", [
    ("", "non-empty"), ("/etc/passwd", "absolute"), ("a/../b", "'..'"), ("..", "'..'"), ("a\0b", "NUL"),
    ("x" * 1025, "longer than 1024"), ("a//b", "empty"), ("a/", "empty"), ("a\nb", "control"), (3, "string"),
])
def test_bad(name: object, why: str) -> None:
    with pytest.raises(BadName, match=why):
        check_name(name)
