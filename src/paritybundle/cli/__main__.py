"""``python -m paritybundle.cli``: the ``bundle`` command (what a rehearsal runs in its clean venv)."""

from .app import main

main()
