"""``python -m celeriac`` runs the CLI."""

from celeriac.cli import main

main()
