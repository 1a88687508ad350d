"""``python -m rainstorm`` is the ``rainstorm`` command (how local clusters spawn nodes)."""

from cli import main

main()
