"""``python -m flower_practices`` runs the command line."""

from .cli import main

main()
