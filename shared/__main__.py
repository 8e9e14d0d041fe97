"""``python -m shared export-schemas [DIR]``: write the committed JSON Schema files."""

from __future__ import annotations

import argparse
import pathlib
import sys

from .jsonschema import MESSAGE_SCHEMAS, json_schema, render, schema_filename

DEFAULT_DIR = pathlib.Path(__file__).parent / "schemas"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export-schemas", help="write one JSON Schema file per message version")
    export.add_argument("directory", nargs="?", type=pathlib.Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    args.directory.mkdir(parents=True, exist_ok=True)
    for message_type, version in sorted(MESSAGE_SCHEMAS):
        path = args.directory / schema_filename(message_type, version)
        path.write_text(render(json_schema(message_type, version)), encoding="utf-8")
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
