"""The mutation score per package from the last `mutmut run` (make mutation), as results/mutation.md and
.json: mutants killed, survived, and not run (no test reached them, timed out, or not yet run), with
every surviving mutant listed for review.

    make mutation                                   # every package in [tool.mutmut] of pyproject.toml
    make mutation MUTANTS='hpcps.sim.*'             # one package's mutants (the others: not run)
    .venv/bin/python benchmarks/mutation_report.py  # the report alone, from mutants/

Target (docs/benchmarks.md): at least 85% of each package's mutants killed. The score counts a mutant
that no unit test reaches as surviving: only tests inside the pytest process see a mutant (MPI ranks
and other subprocesses import the unchanged code).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
PACKAGES = ("hpcps.ps", "hpcps.sim", "hpcps.emulate", "hpcps.comm", "hpcps.tune.models")
TARGET = 0.85
LINE = re.compile(r"^\s*(\S+__mutmut_\d+):\s*(.+?)\s*$")


def package_of(mutant: str) -> str | None:
    return next((p for p in sorted(PACKAGES, key=len, reverse=True) if mutant.startswith(p + ".")), None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--command", default="make mutation", help="the command that ran mutmut (for the header)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "mutation.md")
    args = p.parse_args(argv)
    mutmut = Path(sys.executable).parent / "mutmut"
    if not (ROOT / "mutants").is_dir():
        print("mutation_report: error: no mutants/ directory here; run `make mutation` first", file=sys.stderr)
        return 2
    out = subprocess.run([str(mutmut), "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"mutation_report: error: mutmut results failed: {out.stderr.strip()[-500:]}", file=sys.stderr)
        return 1
    status: dict[str, str] = {}
    for line in out.stdout.splitlines():
        m = LINE.match(line)
        if m:
            status[m.group(1)] = m.group(2)
    from _machine import facts, facts_markdown
    f = facts()
    rows, survivors = [], {}
    for pkg in PACKAGES:
        mine = {k: v for k, v in status.items() if package_of(k) == pkg}
        # A mutant whose tests ran past mutmut's timeout (an endless loop) was detected: it counts as killed.
        killed = sum(v in ("killed", "timeout") for v in mine.values())
        survived = sorted(k for k, v in mine.items() if v in ("survived", "no tests"))
        not_run = sum(v not in ("killed", "timeout", "survived", "no tests") for v in mine.values())
        judged = killed + len(survived)
        rows.append({"package": pkg, "mutants": len(mine), "killed": killed, "survived": len(survived),
                     "no_tests": sum(v == "no tests" for v in mine.values()), "not_run": not_run,
                     "timeouts": sum(v == "timeout" for v in mine.values()),
                     "score": killed / judged if judged else None})
        survivors[pkg] = survived
    lines = ["# Mutation testing", "", f"Command: `{args.command}` (mutmut, config in `pyproject.toml`), then "
             "`.venv/bin/python benchmarks/mutation_report.py`.", "", facts_markdown(f), "",
             "A mutant is one small change to the code (an operator, a constant, a dropped call); it is killed "
             "when a unit test fails against it. Score: killed / (killed + survived); a mutant no unit test "
             "reaches counts as surviving (`no tests`). Only tests in the pytest process see a mutant: code "
             f"that only the MPI and end-to-end suites run survives here. Target: at least {TARGET:.0%} per "
             "package.", "",
             "| package | mutants | killed (of which timed out) | survived (of which no test reaches) | not run "
             "| score |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r["score"] is None:
            score = "-"
        elif r["not_run"]:                  # no verdict on a package whose mutants did not all run
            score = f"{r['score']:.1%} of those run (no verdict: {r['not_run']} not run)"
        else:
            score = f"{r['score']:.1%} ({'met' if r['score'] >= TARGET else 'not met'})"
        lines.append(f"| {r['package']} | {r['mutants']} | {r['killed']} ({r['timeouts']}) | {r['survived']} "
                     f"({r['no_tests']}) | "
                     f"{r['not_run']} | {score} |")
    lines += ["", "Surviving mutants (`mutmut show NAME` prints the change), not yet reviewed one by one:", ""]
    for pkg, names in survivors.items():
        if names:
            lines += [f"<details><summary>{pkg}: {len(names)}</summary>", "", *(f"- `{n}`" for n in names), "",
                      "</details>", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    ran = {k: v for k, v in status.items() if v != "not checked"}     # the others are only counted (rows)
    args.out.with_suffix(".json").write_text(json.dumps({"command": args.command, "facts": f, "packages": rows,
                                                         "status": ran}, indent=1))
    print("\n".join(lines[:len(rows) + 12]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
