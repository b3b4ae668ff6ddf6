"""``brain-extraction-demo-data`` from a checkout: the options are those of ``custom.demo_data.cli``."""

from custom.demo_data.cli import main

if __name__ == "__main__":
    main()
