"""`cancelwatch settings`: print the settings reference or check the environment."""

from __future__ import annotations

import argparse

from cancelwatch import settings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cancelwatch settings", description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="check the current environment and print the values in effect")
    args = parser.parse_args(argv)
    if not args.check:
        print(settings.reference_markdown(), end="")
        return 0
    loaded = settings.load()
    for field, value in vars(loaded).items():
        print(f"{field} = {value!r}")
    return 0
