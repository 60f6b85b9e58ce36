"""python -m hpcps.analyze: what the traces of one or more runs say.

    python -m hpcps.analyze results/runs/<run-id>/trace.h5                  # summary of one run
    python -m hpcps.analyze trials/*/trace.h5                               # a table comparing runs
    python -m hpcps.analyze trace.h5 --plot figures/ --chrome trace.json    # PNGs; Perfetto's format

A file that is not a readable trace ends the command with one line naming it and exit status 2,
before anything is written.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from hpcps.cli import RankAwareParser, run_tool
from hpcps.config.errors import ConfigError

TOOL = "hpcps.analyze"


def build_parser() -> RankAwareParser:
    p = RankAwareParser(prog="python -m hpcps.analyze",
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


def _plot_folders(plot: Path, paths: list[Path]) -> list[Path]:
    """The folder of each trace's figures: plot itself for one trace, else one named after each trace
    (numbered when two would share a name, so that no trace's figures replace another's)."""
    if len(paths) == 1:
        return [plot]
    names = [f"{p.parent.name}-{p.stem}" for p in paths]
    return [plot / (n if names.count(n) == 1 else f"{n}-{i + 1}") for i, n in enumerate(names)]


def check_outputs(args) -> None:
    """Every output may be written (hpcps.io.outputs): none is one of the traces read; an existing
    --json or --chrome file, or a figure in --plot, is replaced atomically. Raises ConfigError."""
    from hpcps.io.outputs import check_output
    inputs = list(args.traces)
    if args.json is not None and str(args.json) != "-":
        check_output(args.json, "--json", inputs=inputs, replace=True, example="analysis.json")
    if args.chrome is not None:
        check_output(args.chrome, "--chrome", inputs=inputs, replace=True, example="trace.json")
    if args.plot is not None:
        check_output(args.plot, "--plot", inputs=inputs, replace=True, directory=True)
        from hpcps.analyze.plots import FIGURES
        for folder in _plot_folders(args.plot, args.traces):
            for name in FIGURES:
                check_output(folder / f"{name}.png", "--plot", inputs=inputs, replace=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(TOOL, lambda: analyze(args))


def analyze(args) -> int:
    """Read every trace, then check every output, then compute everything in memory, and write last:
    bad input or an output that cannot be written leaves no file behind."""
    from hpcps.trace import open_trace
    if args.chrome is not None and len(args.traces) != 1:
        raise ConfigError("--chrome", None, f"exports one trace, got {len(args.traces)}")
    window = _range(args.range)
    traces = [open_trace(p) for p in args.traces]        # every file checked before anything is written
    check_outputs(args)

    from hpcps.analyze import report, stats
    json_only = args.json is not None and str(args.json) == "-"
    say = (lambda *_a, **_k: None) if json_only else print
    if len(traces) == 1:
        summaries = [stats.summarize(traces[0])]
        text = report.summary_text(summaries[0])
        result: object = summaries[0]
    else:
        rows = [stats.comparison_row(t) for t in traces]
        text = report.comparison_text(rows)
        summaries = [stats.summarize(t) for t in traces] if (args.detail or args.json) else []
        if args.detail:
            text += "".join("\n\n" + report.summary_text(s) for s in summaries)
        result = {"comparison": rows, "summaries": summaries}
    outputs: list[tuple[Path, bytes, str]] = []       # (file, content, flag)
    json_text = json.dumps(_jsonable(result), indent=1) if args.json is not None else None
    if json_text is not None and not json_only:
        outputs.append((args.json, (json_text + "\n").encode(), "--json"))
    if args.plot is not None:
        from hpcps.analyze import plots
        for t, folder in zip(traces, _plot_folders(args.plot, args.traces)):
            for name, data in plots.render_all(t, window).items():
                outputs.append((folder / name, data, "--plot"))
    if args.chrome is not None:
        from hpcps.analyze.chrome import chrome_text, to_chrome
        outputs.append((args.chrome, chrome_text(to_chrome(traces[0], window)).encode(), "--chrome"))

    say(text)
    for t in traces:
        if not t.complete:
            print(f"note: {t.path} is partial (status {t.attrs.get('status')!r}): the run did not finish, the file "
                  f"holds the {t.iterations.size} iterations flushed before it stopped", file=sys.stderr)
    if json_only:
        print(json_text)
    from hpcps.io.outputs import write_bytes
    for path, data, flag in outputs:
        write_bytes(path, data, flag)
        if flag != "--json":
            say(f"wrote {path}" + (" (open it at https://ui.perfetto.dev)" if flag == "--chrome" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
