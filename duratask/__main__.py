"""``python -m duratask``: the command line."""

from .cli import main

main()
