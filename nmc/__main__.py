"""Process entry point: `python -m nmc` and the `nmc-server` console script."""

from nmc.patching import patch_all

patch_all()  # before anything else imports socket, ssl or threading

import sys  # noqa: E402

from nmc.cli import main  # noqa: E402


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
