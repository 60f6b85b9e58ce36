"""The mutation score per package from the last `mutmut run` (make mutation), as results/mutation.md and
.json: mutants killed (a test failed, ran past the timeout or died), survived (no test failed, or no test
reaches them), and not run, with every surviving mutant listed for review.

    make mutation                                   # every package in [tool.mutmut] of pyproject.toml
    make mutation MUTANTS='hpcps.sim.*'             # one package's mutants (the others: not run)
    .venv/bin/python benchmarks/mutation_report.py  # the report alone, from mutants/

Target (docs/benchmarks.md): at least 85% of each package's mutants killed. The score counts a mutant
that no unit test reaches as surviving: only tests inside the pytest process see a mutant (MPI ranks
and other subprocesses import the unchanged code).

Survivors reviewed as equivalent (no test can tell them from the code: same behaviour, or a change to a
message or default nothing observable depends on) are named in benchmarks/mutation_equivalent.toml,
by mutant name or glob, each with its reason; the report lists them apart with the reason. They still
count as surviving in the score: killed / (killed + survived), equivalent ones included.

A package whose mutants did not all run gets no verdict from its census. Where
benchmarks/mutation_sample.py drew uniform random samples of its mutants not run (those drawn at the commit of
the newest taken together), the report adds an
estimate of the whole package's score: the mutants run as they stand, the others at the kill rate of the
sample's first run, with a 95% (Wilson) interval, and a verdict only where the whole interval lies on one
side of the target.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DETECTED = ("killed", "timeout", "segfault")     # mutmut's statuses of a mutant some test run noticed
sys.path.insert(0, str(ROOT / "benchmarks"))
PACKAGES = ("hpcps.ps", "hpcps.sim", "hpcps.emulate", "hpcps.comm", "hpcps.tune.models")
TARGET = 0.85
LINE = re.compile(r"^\s*(\S+__mutmut_\d+):\s*(.+?)\s*$")
EQUIVALENT = ROOT / "benchmarks" / "mutation_equivalent.toml"
SAMPLES = ROOT / "results" / "mutation_samples.json"
SURVIVED = ("survived", "no tests")


def load_equivalent(path: Path = EQUIVALENT) -> list[tuple[list[str], str]]:
    """[(name globs, reason)] from [[equivalent]] tables: mutants = [names or globs], reason = "..."."""
    if not path.exists():
        return []
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    out = []
    for i, t in enumerate(raw.get("equivalent", [])):
        globs, reason = t.get("mutants"), t.get("reason")
        if not (isinstance(globs, list) and globs and all(isinstance(g, str) for g in globs)
                and isinstance(reason, str) and reason.strip()):
            raise ValueError(f"{path}: equivalent[{i}] needs mutants = [names or globs] and a reason")
        out.append((globs, reason.strip()))
    return out


def reason_for(mutant: str, equivalent: list[tuple[list[str], str]]) -> str | None:
    """The reason of the first entry naming mutant (fnmatch globs, the [ of a name taken literally)."""
    for globs, reason in equivalent:
        if any(fnmatch.fnmatchcase(mutant, g.replace("[", "[[]")) for g in globs):
            return reason
    return None


def mutmut_command() -> list[str]:
    """The mutmut beside this Python, else this Python's mutmut module (installed elsewhere on PYTHONPATH)."""
    here = Path(sys.executable).parent / "mutmut"
    return [str(here)] if here.exists() else [sys.executable, "-m", "mutmut"]


def package_of(mutant: str) -> str | None:
    return next((p for p in sorted(PACKAGES, key=len, reverse=True) if mutant.startswith(p + ".")), None)


def read_statuses() -> dict[str, str]:
    """{mutant name: mutmut's status} of every mutant generated under mutants/ ("not checked": never run)."""
    out = subprocess.run([*mutmut_command(), "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"mutmut results failed: {out.stderr.strip()[-500:]}")
    return {m.group(1): m.group(2) for line in out.stdout.splitlines() if (m := LINE.match(line))}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion k / n (at 95% for z = 1.96): unlike the normal one it stays
    inside [0, 1] and keeps its coverage near 0 and 1, where kill rates live."""
    if n <= 0:
        return 0.0, 1.0
    q = k / n
    centre = (q + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(q * (1 - q) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def estimate(killed: int, survived: int, not_run: int, sample_killed: int, sample_judged: int
             ) -> tuple[float, float, float]:
    """(estimate, low, high) of a package's score over all its mutants: the killed / survived ones as counted,
    the not-run ones killed at the sample's rate (its Wilson interval for the bounds)."""
    total = killed + survived + not_run
    rate = sample_killed / sample_judged
    lo, hi = wilson(sample_killed, sample_judged)
    return tuple((killed + r * not_run) / total for r in (rate, lo, hi))   # type: ignore[return-value]


def latest_samples(path: Path = SAMPLES) -> dict[str, dict]:
    """{package: its sample}: the package's records in mutation_samples.json drawn at the commit of its newest
    one, as one sample (each drawn from the mutants not run then, so none twice; "pool": the first's, the
    number not run before any of them ran)."""
    if not path.exists():
        return {}
    records = json.loads(path.read_text())
    out: dict[str, dict] = {}
    for pkg in dict.fromkeys(r["package"] for r in records):
        mine = [r for r in records if r["package"] == pkg]
        same = [r for r in mine if r["commit"] == mine[-1]["commit"]]
        status = {n: st for r in same for n, st in r["status"].items()}
        out[pkg] = {**same[0], "status": status, "seed": ",".join(str(r["seed"]) for r in same),
                    "samples": len(same)}
    return out


def estimate_cell(row: dict, sample: dict | None) -> str:
    """The verdict cell of a package not run whole: its sample's estimate, or no verdict without one."""
    first = f"{row['score']:.1%} of those run (no verdict from the census: {row['not_run']} not run)"
    if sample is None:
        return first
    k = sum(s in DETECTED for s in sample["status"].values())
    n = k + sum(s in SURVIVED for s in sample["status"].values())
    if n == 0:
        return first
    est, lo, hi = estimate(row["killed"], row["survived"], row["not_run"], k, n)
    missing = len(sample["status"]) - n          # drawn, but the run stopped before them
    row["estimate"] = {"score": est, "low": lo, "high": hi, "sample_killed": k, "sample_judged": n,
                       "sample_not_run": missing, "sample_pool": sample["pool"], "sample_seed": sample["seed"],
                       "sample_commit": sample["commit"]}
    # mutmut runs the mutants with the quickest tests first: what ran of a sample whose run stopped early
    # is not uniform. The sample as drawn is, so its verdict must hold whatever the missing ones would
    # have done: the low end with all of them surviving, the high end with all of them killed.
    if missing:
        lo = estimate(row["killed"], row["survived"], row["not_run"], k, n + missing)[1]
        hi = estimate(row["killed"], row["survived"], row["not_run"], k + missing, n + missing)[2]
        row["estimate"].update(low_any=lo, high_any=hi)
    verdict = "met, estimated" if lo >= TARGET else "not met, estimated" if hi < TARGET else "undecided"
    if missing:
        verdict += f"; {missing} of the sample not run, the interval holding whether they would have been killed or not"
    drawn = "a sample" if sample.get("samples", 1) == 1 else f"{sample['samples']} samples"
    return (f"{first}; estimated over all: {est:.1%} [{lo:.1%}, {hi:.1%}] ({verdict}; {drawn} of {n} of the "
            f"{sample['pool']} then not run, {k} killed on their first run, commit {sample['commit']})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--command", default="make mutation", help="the command that ran mutmut (for the header)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "mutation.md")
    args = p.parse_args(argv)
    if not (ROOT / "mutants").is_dir():
        print("mutation_report: error: no mutants/ directory here; run `make mutation` first", file=sys.stderr)
        return 2
    try:
        status = read_statuses()
    except RuntimeError as e:
        print(f"mutation_report: error: {e}", file=sys.stderr)
        return 1
    samples = latest_samples()
    from _machine import facts, facts_markdown
    f = facts()
    try:
        equivalent = load_equivalent()
    except (ValueError, tomllib.TOMLDecodeError) as e:
        print(f"mutation_report: error: {e}", file=sys.stderr)
        return 1
    rows, survivors, reasons = [], {}, {}
    for pkg in PACKAGES:
        mine = {k: v for k, v in status.items() if package_of(k) == pkg}
        # A mutant whose tests ran past mutmut's timeout (an endless loop), or whose test process died of a
        # signal (mutmut's "segfault": the mutant broke MPI or NumPy below Python), was detected: it counts
        # as killed.
        killed = sum(v in DETECTED for v in mine.values())
        survived = sorted(k for k, v in mine.items() if v in SURVIVED)
        not_run = sum(v not in DETECTED + SURVIVED for v in mine.values())
        judged = killed + len(survived)
        explained = {k: r for k in survived if (r := reason_for(k, equivalent)) is not None}
        rows.append({"package": pkg, "mutants": len(mine), "killed": killed, "survived": len(survived),
                     "no_tests": sum(v == "no tests" for v in mine.values()), "not_run": not_run,
                     "timeouts": sum(v == "timeout" for v in mine.values()),
                     "crashed": sum(v == "segfault" for v in mine.values()), "equivalent": len(explained),
                     "unexplained": len(survived) - len(explained),
                     "score": killed / judged if judged else None})
        survivors[pkg] = [k for k in survived if k not in explained]
        reasons[pkg] = explained
    lines = ["# Mutation testing", "", f"Command: `{args.command}` (mutmut, config in `pyproject.toml`), then "
             "`.venv/bin/python benchmarks/mutation_report.py`.", "", facts_markdown(f), "",
             "A mutant is one small change to the code (an operator, a constant, a dropped call); it is killed "
             "when a unit test fails against it. Score: killed / (killed + survived); a mutant no unit test "
             "reaches counts as surviving (`no tests`), and so does one reviewed as equivalent (listed apart "
             "below with the reason, from `benchmarks/mutation_equivalent.toml`): equivalent mutants are not "
             "taken out of the score. Not run: mutants generated but not tested in this run (not in the "
             "patterns given, or the run stopped); they count neither way. Only tests in the pytest process "
             "see a mutant: code that only the MPI and end-to-end suites run survives here. Target: at least "
             f"{TARGET:.0%} per package. A package not run whole is estimated from uniform random samples of its "
             "mutants not run (benchmarks/mutation_sample.py; the samples drawn at one commit taken together): "
             "those run count as they stand, the rest at the kill "
             "rate of the sample's first run (before any test was written for its survivors), with a 95% Wilson "
             "interval; the verdict is given only where the whole interval lies on one side of the target. Where "
             "some of a sample did not run (mutmut runs the quickly tested mutants first, so the part that ran is "
             "not uniform), the verdict must hold whether those would have been killed or not.", "",
             "| package | mutants | killed (of which timed out / crashed) | survived (of which no test reaches) "
             "| of the survivors: equivalent / unexplained | not run | score |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r["score"] is None:
            score = "-"
        elif r["not_run"]:                  # no verdict from the census of a package whose mutants did not all run
            score = estimate_cell(r, samples.get(r["package"]))
        else:
            score = f"{r['score']:.1%} ({'met' if r['score'] >= TARGET else 'not met'})"
        lines.append(f"| {r['package']} | {r['mutants']} | {r['killed']} ({r['timeouts']} / {r['crashed']}) | "
                     f"{r['survived']} "
                     f"({r['no_tests']}) | {r['equivalent']} / {r['unexplained']} | "
                     f"{r['not_run']} | {score} |")
    if any(reasons.values()):
        lines += ["", "Survivors reviewed as equivalent or not worth a test (counted as surviving above), by "
                  "reason:", ""]
        for pkg, explained in reasons.items():
            by_reason: dict[str, list[str]] = {}
            for k, r in explained.items():
                by_reason.setdefault(r, []).append(k)
            for reason, names in by_reason.items():
                lines += [f"- {pkg}, {len(names)}: {reason}",
                          f"  <details><summary>mutants</summary> {', '.join(f'`{n}`' for n in names)}</details>"]
    lines += ["", "Surviving mutants (`mutmut show NAME` prints the change) not explained above:", ""]
    if not any(survivors.values()):
        lines += ["none", ""]
    for pkg, names in survivors.items():
        if names:
            lines += [f"<details><summary>{pkg}: {len(names)}</summary>", "", *(f"- `{n}`" for n in names), "",
                      "</details>", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    ran = {k: v for k, v in status.items() if v != "not checked"}     # the others are only counted (rows)
    args.out.with_suffix(".json").write_text(json.dumps({"command": args.command, "facts": f, "packages": rows,
                                                         "status": ran,
                                                         "equivalent": {k: r for e in reasons.values()
                                                                        for k, r in e.items()}}, indent=1))
    print("\n".join(lines[:len(rows) + 12]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
