"""Rendering of sbatch scripts and srun/sbatch command lines: golden files, quoting, determinism."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from hpcps.slurm.script import (
    SbatchOptions,
    SrunOptions,
    TrialJob,
    directive_quote,
    export_lines,
    format_command,
    literal_filename,
    render_sbatch_script,
    sbatch_directives,
    shell_quote,
    srun_argv,
)
from tests.unit.golden import check_golden

ROOT = Path(__file__).resolve().parents[2]

ODD_VALUES = [
    "plain", "with space", "it's", 'say "hi"', "back\\slash", "$HOME", "`date`", "a;b|c&d", "50%",
    "#not a comment", "tab\there", "ünïcode", "", "--flag", "*glob?", "end\\",
]


def sbatch_directive_argument(text: str) -> str:
    """What sbatch's #SBATCH parser (src/sbatch/opt.c, _get_argument) makes of one option argument:
    quotes group, a backslash escapes the next character anywhere, an unquoted '#' ends the line."""
    out, quote, escape = [], "", False
    for c in text:
        if escape:
            out.append(c)
            escape = False
        elif c == "\\":
            escape = True
        elif quote:
            if c == quote:
                quote = ""
            else:
                out.append(c)
        elif c in "\"'":
            quote = c
        elif c == "#" or c.isspace():
            break
        else:
            out.append(c)
    return "".join(out)


def odd_trial(trial_dir: str = "/scratch/runs/tune 1/trial 'seven' \"7\" 50%") -> TrialJob:
    return TrialJob(
        trial_dir=trial_dir,
        command=("/opt/my env/bin/python", "-m", "hpcps.train", "--job", "/data/it's jobs/digits.toml",
                 "--schedule", "schedule $1.toml"),
        nodes=("n1", "n2", "n6"), ntasks=5, time="3", job_name="hpcps-trial-7",
        env=(("HPCPS_TRACE", "/scratch/runs/tune 1/trace \"7\".h5"), ("OMP_NUM_THREADS", "1")),
        rank_nodes=("n1", "n1", "n2", "n6", "n6"), partition="debug",
    )


@pytest.mark.parametrize("value", ODD_VALUES)
def test_shell_quote_round_trips(value):
    assert shlex.split(shell_quote(value)) == [value]


@pytest.mark.parametrize("value", ODD_VALUES)
def test_directive_quote_round_trips_through_sbatchs_parser(value):
    assert sbatch_directive_argument(directive_quote(value)) == value


def test_directive_quote_refuses_line_breaks():
    with pytest.raises(ValueError, match="line break"):
        directive_quote("a\nb")


def test_literal_filename_escapes_percent_and_refuses_backslash():
    assert literal_filename("/runs/50%/%j.out") == "/runs/50%%/%%j.out"
    with pytest.raises(ValueError, match="backslash"):
        literal_filename("/runs/a\\b/out")


def test_format_command_round_trips_through_the_shell():
    argv = ["python", "-c", "print('hi')", "it's a \"test\"", "$HOME", ""]
    assert shlex.split(format_command(argv)) == argv


def test_options_are_sorted_and_unset_ones_left_out():
    opts = SbatchOptions(time="5", job_name="j", ntasks=4, nodes=2, exclusive=True, extra=(("--mem", "1G"),))
    assert sbatch_directives(opts) == [f"#SBATCH {flag}" for flag in (
        "--exclusive", "--job-name=j", "--mem=1G", "--nodes=2", "--ntasks=4", "--time=5")]


def test_an_option_given_twice_is_an_error():
    with pytest.raises(ValueError, match="--time given twice"):
        SbatchOptions(time="5", extra=(("time", "6"),)).pairs()


def test_srun_needs_a_command():
    with pytest.raises(ValueError, match="command"):
        srun_argv(SrunOptions(ntasks=1), [])


def test_export_lines_quote_values_and_check_names():
    assert export_lines({"B": "x y", "A": "1"}) == ["export A=1", "export B='x y'"]
    with pytest.raises(ValueError, match="environment variable name"):
        export_lines({"BAD-NAME": "1"})


def test_rendering_is_deterministic():
    assert odd_trial().render_script() == odd_trial().render_script()


def test_trial_job_script_golden():
    check_golden("trial_job.sh", odd_trial().render_script())


def test_trial_step_command_golden():
    trial = odd_trial()
    text = format_command(srun_argv(trial.srun_options(in_batch=False), trial.command)) + "\n"
    check_golden("trial_step.txt", text)


def test_plain_sbatch_script_golden():
    opts = SbatchOptions(job_name="hpcps-train", nodes=2, ntasks=4, time="00:30:00", output="%x-%j.out",
                         error="%x-%j.out", signal="B:TERM@60", chdir="/home/me/my project")
    body = ["set -eu", format_command(srun_argv(SrunOptions(mpi="pmi2"), ["python", "-m", "hpcps.train"]))]
    check_golden("plain_sbatch.sh", render_sbatch_script(opts, body, comment="A training run."))


def test_trial_directives_parse_back_to_the_paths():
    trial = odd_trial()
    parsed = {}
    for line in sbatch_directives(trial.sbatch_options()):
        flag, _, arg = line[len("#SBATCH "):].partition("=")
        parsed[flag] = sbatch_directive_argument(arg) if arg else None
    assert parsed["--chdir"] == trial.trial_dir
    assert parsed["--output"] == literal_filename(trial.output_path)
    assert parsed["--nodelist"] == "n1,n2,n6"


def test_trial_script_body_runs_in_bash_with_exact_values(tmp_path):
    """Every exported value and argument reaches the program exactly (bash, not a model of it)."""
    trial = odd_trial(str(tmp_path / "trial 'x' \"y\" $z"))
    script = trial.render_script()
    # Replace the final srun by a printout of the environment and the arguments it would get.
    body = [ln for ln in script.splitlines() if not ln.startswith("#")]
    assert body[-1].startswith("exec srun ")
    argv_text = body[-1][len("exec "):]
    body[-1] = ('printf "%s\\n" "$HPCPS_TRACE" "$SLURM_HOSTFILE"; for a in ' + argv_text
                + '; do printf "%s\\n" "$a"; done')
    out = subprocess.run(["bash", "-c", "\n".join(body)], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == dict(trial.env)["HPCPS_TRACE"]
    assert lines[1] == trial.hostfile_path
    argv = srun_argv(trial.srun_options(in_batch=True), trial.command)
    assert lines[2:] == argv


def test_trial_job_checks_its_inputs():
    with pytest.raises(ValueError, match="rank_nodes names 2 ranks but ntasks is 3"):
        TrialJob("/t", ("x",), ("n1",), 3, "1", "j", rank_nodes=("n1", "n1"))
    with pytest.raises(ValueError, match="not in nodes: n9"):
        TrialJob("/t", ("x",), ("n1",), 1, "1", "j", rank_nodes=("n9",))
    with pytest.raises(ValueError, match="command"):
        TrialJob("/t", (), ("n1",), 1, "1", "j")


def test_arbitrary_placement_leaves_the_nodelist_to_the_host_file():
    trial = odd_trial()
    argv = srun_argv(trial.srun_options(in_batch=True), trial.command)
    assert "--distribution=arbitrary" in argv
    assert not any(a.startswith("--nodelist") for a in argv)
    assert trial.hostfile_text() == "n1\nn1\nn2\nn6\nn6\n"


# ---- the shipped batch scripts ---------------------------------------------------------------------

def sbatch_header(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("#SBATCH "):
            flag, _, arg = line[len("#SBATCH "):].partition("=")
            out[flag] = sbatch_directive_argument(arg) if arg else ""
        elif line and not line.startswith("#"):
            break   # sbatch stops reading directives at the first command
    return out


@pytest.mark.parametrize("script", ["slurm/train.sh", "slurm/tune.sh"])
def test_batch_scripts_have_a_full_header_and_valid_syntax(script):
    path = ROOT / script
    header = sbatch_header(path)
    for flag in ("--job-name", "--nodes", "--time", "--output"):
        assert flag in header, f"{script} has no #SBATCH {flag}"
    # No --error: stderr then goes wherever --output does, also when sbatch --output=... overrides it.
    assert "--error" not in header, f"{script} sends stderr apart from an overridden --output"
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_tune_script_forwards_sigterm_and_resumes():
    text = (ROOT / "slurm/tune.sh").read_text()
    assert sbatch_header(ROOT / "slurm/tune.sh")["--signal"].startswith("B:TERM@")
    assert "trap " in text and "kill -TERM" in text
    assert "--backend slurm" in text and "--resume" in text
