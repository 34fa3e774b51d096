"""`cancelwatch schema`: print the JSON Schema of the contract's events.

The schema is generated from streams/cancelwatch/core/events.py, the definitions the worker
decodes with; docs/events.schema.json is this output, committed.
"""

from __future__ import annotations

import argparse
import json
import sys

from cancelwatch.core import events


def render() -> str:
    return json.dumps(events.json_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cancelwatch schema", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    sys.stdout.write(render())
    return 0
