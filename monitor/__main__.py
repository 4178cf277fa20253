"""`python -m monitor`: the same entry point as the `monitor` console script."""

from monitor.cli import main

main()
