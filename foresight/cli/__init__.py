"""`foresight` — the command-line client.

One module per service (`trainer`, `scorer`, `segmenter`) plus `system`; each
command is one small function registered on the shared `app` (in `app.py`,
with the global options and output helpers). Importing this package
registers every command.
"""

from foresight.cli import scorer, segmenter, system, trainer
from foresight.cli.app import app

__all__ = ["app", "scorer", "segmenter", "system", "trainer"]
