"""python -m hpcps.analyze: what the traces of one or more runs say.

    python -m hpcps.analyze results/runs/<run-id>/trace.h5                  # summary of one run
    python -m hpcps.analyze trials/*/trace.h5                               # a table comparing runs
    python -m hpcps.analyze trace.h5 --plot figures/ --chrome trace.json    # PNGs; Perfetto's format

A file that is not a readable trace ends the command with one line naming it and exit status 2,
before anything is written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from hpcps.cli import fail_input
from hpcps.config.errors import ConfigError

TOOL = "hpcps.analyze"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpcps.analyze",
                                description="Summarise, compare, plot and export hpcps traces (HDF5).")
    p.add_argument("traces", nargs="+", type=Path, metavar="TRACE.h5", help="trace files written by hpcps.train")
    p.add_argument("--plot", type=Path, metavar="DIR",
                   help="write PNGs (timeline, breakdown, throughput, compute_vs_batch) into DIR; with several "
                        "traces, into one folder per trace")
    p.add_argument("--chrome", type=Path, metavar="FILE.json",
                   help="export Chrome trace-event JSON (opens in Perfetto); one trace only")
    p.add_argument("--json", type=Path, metavar="FILE",
                   help="write the analysis as JSON ('-': standard output, instead of the text)")
    p.add_argument("--range", metavar="FIRST:LAST",
                   help="iterations for the timeline and the Chrome export (default: three typical ones for "
                        "the timeline, all for the export)")
    p.add_argument("--detail", action="store_true", help="with several traces, print each one's summary too")
    return p


def _range(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        lo, hi = (int(x) for x in text.split(":"))
    except ValueError:
        raise ConfigError("--range", None, f"must be FIRST:LAST with two iteration numbers, got {text!r}") from None
    if hi < lo or lo < 0:
        raise ConfigError("--range", None, f"must satisfy 0 <= FIRST <= LAST, got {text!r}")
    return lo, hi


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hpcps.trace import open_trace
    try:
        if args.chrome is not None and len(args.traces) != 1:
            raise ConfigError("--chrome", None, f"exports one trace, got {len(args.traces)}")
        window = _range(args.range)
        traces = [open_trace(p) for p in args.traces]        # every file checked before anything is written
    except ConfigError as e:
        fail_input(TOOL, e)

    from hpcps.analyze import report, stats
    json_only = args.json is not None and str(args.json) == "-"
    say = (lambda *_a, **_k: None) if json_only else print
    if len(traces) == 1:
        summaries = [stats.summarize(traces[0])]
        say(report.summary_text(summaries[0]))
        result: object = summaries[0]
    else:
        rows = [stats.comparison_row(t) for t in traces]
        say(report.comparison_text(rows))
        summaries = [stats.summarize(t) for t in traces] if (args.detail or args.json) else []
        if args.detail:
            for s in summaries:
                say()
                say(report.summary_text(s))
        result = {"comparison": rows, "summaries": summaries}
    for t in traces:
        if not t.complete:
            print(f"note: {t.path} is partial (status {t.attrs.get('status')!r}): the run did not finish, the file "
                  f"holds the {t.iterations.size} iterations flushed before it stopped", file=sys.stderr)

    if args.json is not None:
        text = json.dumps(_jsonable(result), indent=1)
        if str(args.json) == "-":
            print(text)
        else:
            args.json.write_text(text + "\n")
    if args.plot is not None:
        from hpcps.analyze import plots
        for t in traces:
            folder = args.plot if len(traces) == 1 else args.plot / (t.path.parent.name + "-" + t.path.stem)
            for png in plots.write_all(t, folder, window):
                say(f"wrote {png}")
    if args.chrome is not None:
        from hpcps.analyze.chrome import to_chrome, write_chrome
        write_chrome(to_chrome(traces[0], window), args.chrome)
        say(f"wrote {args.chrome} (open it at https://ui.perfetto.dev)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
