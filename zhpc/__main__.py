"""``python -m zhpc`` is the ``zhpc`` command (used by batch scripts to pin the interpreter)."""

from zhpc.cli import entry

entry()
