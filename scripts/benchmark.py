"""``brain-extraction-benchmark`` from a checkout: the options are those of ``custom.benchmark.cli``."""

from custom.benchmark.cli import main

if __name__ == "__main__":
    main()
