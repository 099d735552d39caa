"""``python -m celeriac.cli``: the ``celeriac`` command."""

from celeriac.cli import main

main()
