"""`python -m sparcode`: the same CLI as the `sparcode` console script."""
from sparcode.cli import main

main(prog_name="sparcode")
