"""`graphopt passes`: every registered pass with its options, generated from the code."""

from __future__ import annotations

COMMAND = "passes"
HELP = "list the passes with their options and defaults"


def configure(parser) -> None:
    parser.add_argument("--json", action="store_true")


def run(args) -> int:
    import json

    from graphopt.passes import describe_options, registry

    rows = []
    for name, cls in registry().items():
        rows.append({"name": name, "summary": cls.summary, "lossless": cls.lossless,
                     "options": describe_options(cls.Options)})
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for row in rows:
        kind = "lossless" if row["lossless"] else "lossy"
        print(f"{row['name']} ({kind}): {row['summary']}")
        for opt in row["options"]:
            choices = f" [{'|'.join(map(str, opt['choices']))}]" if opt["choices"] else ""
            print(f"    {opt['name']}: {opt['type']} = {opt['default']!r}{choices}  {opt['doc']}")
    return 0
