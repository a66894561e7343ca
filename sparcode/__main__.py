"""`python -m sparcode`: the same CLI as the `sparcode` console script."""
from sparcode.cli import main

if __name__ == "__main__":
    main(prog_name="sparcode")
