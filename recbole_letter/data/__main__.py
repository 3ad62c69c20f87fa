"""``python -m recbole_letter.data convert --format=FORMAT --input=PATH --name=NAME [options]``."""

import argparse
import sys

from recbole_letter.data import CONVERTERS, ConversionError, convert

# Which options each format accepts (the rest are refused, not ignored).
FORMAT_OPTIONS = {
    "letter_json": {"text_fields"},
    "amazon2018": {"category", "interactions", "kcore", "timestamp", "repeats"},
    "amazon2014": {"category", "kcore", "timestamp", "repeats"},
    "yelp": {"start_date", "end_date", "kcore", "timestamp", "repeats"},
}


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m recbole_letter.data")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("convert", help="raw data -> RecBole atomic files in <output_dir>/<name>/")
    p.add_argument("--format", required=True, choices=sorted(CONVERTERS))
    p.add_argument("--input", required=True,
                   help="letter_json: a *.inter.json file or its folder; others: the folder of the raw files")
    p.add_argument("--output_dir", default="dataset", help="parent folder (RecBole's data_path); default: dataset")
    p.add_argument("--name", required=True, help="dataset name: files become <output_dir>/<name>/<name>.inter ...")
    p.add_argument("--overwrite", action="store_true", help="replace an existing <output_dir>/<name>/")
    p.add_argument("--category", help="amazon: category file stem, e.g. Musical_Instruments (2018), Beauty (2014)")
    p.add_argument("--interactions", choices=["auto", "csv", "reviews"],
                   help="amazon2018: ratings <Category>.csv or reviews <Category>_5.json.gz (default: auto)")
    p.add_argument("--kcore", type=int, help="amazon/yelp: keep users and items with >= k interactions (default 5)")
    p.add_argument("--timestamp", choices=["time", "position"],
                   help="amazon/yelp: write real times or positions in each user's sequence (default time)")
    p.add_argument("--repeats", choices=["first", "keep"],
                   help="amazon/yelp: a user's repeated item: keep the first (amazon default, LC-Rec) or every "
                        "interaction (yelp default, LETTER's Yelp)")
    p.add_argument("--start_date", help="yelp: first day kept, YYYY-MM-DD")
    p.add_argument("--end_date", help="yelp: last day kept, YYYY-MM-DD (inclusive)")
    p.add_argument("--text_fields", help="letter_json: comma list of item.json fields to keep (default: all text fields)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    options = {}
    for key in ("category", "interactions", "kcore", "timestamp", "repeats", "start_date", "end_date", "text_fields"):
        value = getattr(args, key)
        if value is None:
            continue
        if key not in FORMAT_OPTIONS[args.format]:
            print(f"error: --{key} does not apply to --format={args.format}", file=sys.stderr)
            return 2
        options[key] = [f for f in value.split(",") if f] if key == "text_fields" else value
    if args.format.startswith("amazon") and not args.category:
        print(f"error: --format={args.format} needs --category (e.g. Beauty, Musical_Instruments)", file=sys.stderr)
        return 2
    try:
        stats = convert(args.format, args.input, args.output_dir, args.name, args.overwrite, **options)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(stats.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
