"""``brain-extraction-reproduce`` from a checkout: the options are those of ``custom.reproduction.cli``."""

from custom.reproduction.cli import main

if __name__ == "__main__":
    main()
