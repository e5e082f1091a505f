"""``python -m dgp``: the same as the ``dgp`` command."""

from dgp.cli import main

if __name__ == "__main__":
    main()
