"""Layer: cli."""

from bninspect.cli import main

main()
