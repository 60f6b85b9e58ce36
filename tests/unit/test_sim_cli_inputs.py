"""hpcps.sim.cli.resolve_inputs: which schedule is simulated and under which label, what may be saved
and where, the bounds of every flag (both ends), and the options the flags make."""

import json
from pathlib import Path

import pytest

from hpcps.cluster import load_cluster
from hpcps.cluster.placement import NodeSchedule, balanced, naive, place_rank_schedule
from hpcps.config import ConfigError, load_job
from hpcps.sim.cli import build_parser, main, resolve_inputs

ROOT = Path(__file__).resolve().parents[2]
HETERO8 = str(ROOT / "jobs/clusters/hetero8.toml")
JOB = str(ROOT / "jobs/default.toml")


def resolve(*args):
    return resolve_inputs(build_parser().parse_args(["--cluster", HETERO8, *args]))


def refused(*args):
    with pytest.raises(ConfigError) as e:
        resolve(*args)
    return str(e.value)


@pytest.fixture(scope="module")
def cluster():
    return load_cluster(HETERO8)


@pytest.mark.parametrize("name, build", [("naive", naive), ("balanced", balanced)])
def test_a_builtin_schedule_by_name(cluster, name, build):
    job, _, placement, label, node_schedule, _, _, _ = resolve("--schedule", name)
    assert label == name and node_schedule == build(cluster, 64)
    assert placement == build(cluster, 64).to_rank_schedule() and job.name == "digits"


def test_without_a_schedule_the_default_is_naive(cluster):
    _, c, placement, label, node_schedule, _, _, _ = resolve()
    assert label == "naive" and node_schedule == naive(cluster, 64) and placement == node_schedule.to_rank_schedule()
    assert c.name == "hetero8"


def job_with_schedule(tmp_path, workers, threads=1):
    job = tmp_path / "ranked.toml"
    job.write_text(Path(JOB).read_text() + "\n[schedule]\nservers = [0]\n" + "".join(
        f"[[schedule.workers]]\nrank = {r}\nbatch = {b}\nthreads = {threads}\n" for r, b in enumerate(workers)))
    return job


def test_the_jobs_rank_schedule(tmp_path, cluster):
    path = job_with_schedule(tmp_path, [32, 16, 16])
    job, _, placement, label, node_schedule, _, _, _ = resolve("--job", str(path))
    assert label == f"{path} [schedule]" and node_schedule is None
    assert placement == place_rank_schedule(load_job(path).schedule, cluster)
    assert [w.batch for w in placement.schedule.workers] == [32, 16, 16] and job.source == str(path)
    assert "--save-schedule: only a node schedule can be saved: use naive, balanced or a node schedule file" \
        == refused("--job", str(path), "--save-schedule", str(tmp_path / "out.toml"))


def test_the_jobs_schedule_is_checked(tmp_path):
    wrong = job_with_schedule(tmp_path, [32, 8])
    assert "global_batch is 64" in refused("--job", str(wrong))
    greedy = job_with_schedule(tmp_path, [64], threads=64)          # n1 has far fewer cores
    assert "threads" in refused("--job", str(greedy))


def test_a_node_schedule_file_can_be_saved_again_and_a_rank_one_cannot(tmp_path, cluster):
    nodes = tmp_path / "nodes.toml"
    code = main(["--cluster", HETERO8, "--schedule", "balanced", "--save-schedule", str(nodes), "--json"])
    assert code == 0
    out = tmp_path / "again.toml"
    _, _, placement, label, node_schedule, _, _, _ = resolve("--schedule", str(nodes), "--save-schedule", str(out))
    assert label == str(nodes) and isinstance(node_schedule, NodeSchedule)
    assert node_schedule.nodes == balanced(cluster, 64).nodes
    want = balanced(cluster, 64).to_rank_schedule()
    assert placement.rank_nodes == want.rank_nodes and placement.schedule.workers == want.schedule.workers


def test_saving_replaces_an_existing_file_but_never_an_input(tmp_path, monkeypatch, capsys):
    old = tmp_path / "old.toml"
    old.write_text("# an older schedule\n")
    assert resolve("--save-schedule", str(old))[4] is not None               # replacing is allowed
    assert main(["--cluster", HETERO8, "--save-schedule", str(old), "--json"]) == 0
    assert "[[nodes]]" in old.read_text()
    assert refused("--schedule", str(old), "--save-schedule", str(old)).endswith(
        f"{old} is also an input of this command ({old}); choose another output")
    profiles = tmp_path / "p.toml"
    profiles.write_text((ROOT / "hpcps/sim/profiles.toml").read_text())
    assert "is also an input" in refused("--profiles", str(profiles), "--save-schedule", str(profiles))
    monkeypatch.setenv("HPCPS_PROFILES", str(profiles))
    assert "is also an input" in refused("--save-schedule", str(profiles))
    monkeypatch.delenv("HPCPS_PROFILES")
    monkeypatch.chdir(tmp_path)                       # a file named like a built-in is not the built-in
    assert resolve("--schedule", "naive", "--save-schedule", "naive")[3] == "naive"
    assert refused("--save-schedule", str(tmp_path)) == (f"--save-schedule: {tmp_path} is a directory; give a "
                                                          f"file name such as {tmp_path / 'schedule.toml'}")
    assert refused("--save-schedule", str(tmp_path / "no" / "s.toml")) == \
        f"--save-schedule: directory {tmp_path / 'no'} does not exist"


def test_the_bundled_profiles_are_an_input_too(tmp_path, monkeypatch):
    # Without --profiles and HPCPS_PROFILES the simulation reads hpcps/sim/profiles.toml: saving the
    # schedule over it would replace the calibration with a schedule.
    import hpcps.sim.profile
    bundled = tmp_path / "profiles.toml"
    bundled.write_text((ROOT / "hpcps/sim/profiles.toml").read_text())
    monkeypatch.setattr(hpcps.sim.profile, "DEFAULT_PROFILES", bundled)
    monkeypatch.delenv("HPCPS_PROFILES", raising=False)
    before = bundled.read_text()
    assert refused("--save-schedule", str(bundled)).endswith(
        f"{bundled} is also an input of this command ({bundled}); choose another output")
    with pytest.raises(SystemExit) as e:
        main(["--cluster", HETERO8, "--save-schedule", str(bundled), "--json"])
    assert e.value.code == 2 and bundled.read_text() == before


@pytest.mark.parametrize("args, message", [
    (["--resolution", "-0.5"], "--resolution: must be >= 0 and <= 10000, got -0.5"),
    (["--resolution", "20000"], "--resolution: must be >= 0 and <= 10000, got 20000"),
    (["--staleness", "1001", "--sync", "ssp"], "--staleness: must be >= 0 and <= 1000, got 1001"),
    (["--seed", str(2**32)], f"--seed: must be >= 0 and <= {2**32 - 1}, got {2**32}"),
    (["--straggler-slowdown", "1001"], "--straggler-slowdown: must be >= 1 and <= 1000"),
    (["--straggler-prob", "-0.5"], "--straggler-prob: must be >= 0 and <= 1, got -0.5"),
    (["--iterations", "0"], "--iterations: must be >= 1 and <= 10000, got 0"),
    (["--noise", "-1"], "--noise: must be >= 0 and <= 5"),
])
def test_flag_bounds(args, message):
    assert refused(*args).startswith(message)


def test_the_lowest_and_highest_values_are_accepted():
    *_, options = resolve("--resolution", "0", "--staleness", "0", "--sync", "ssp", "--iterations", "1",
                          "--straggler-slowdown", "1", "--straggler-prob", "1", "--seed", "0", "--noise", "0")
    assert (options.resolution_s, options.staleness, options.sync, options.iterations) == (0.0, 0, "ssp", 1)
    assert (options.straggler_slowdown, options.straggler_prob, options.seed, options.noise_sigma) == (1, 1, 0, 0)
    *_, options = resolve("--resolution", "0.5", "--seed", str(2**32 - 1), "--straggler-slowdown", "1000",
                          "--staleness", "1000", "--sync", "ssp", "--noise", "5", "--iterations", "10000")
    assert (options.resolution_s, options.seed, options.straggler_slowdown) == (0.5, 2**32 - 1, 1000)
    assert (options.staleness, options.noise_sigma, options.iterations) == (1000, 5, 10000)


def test_the_flags_make_the_options(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(Path(JOB).read_text().replace("[model]\nhidden = 128", "[model]\nhidden = 256")
                   + "\n[exchange]\nbucket_mb = 0.5\ncodec = \"int8\"\n")
    loaded, _, _, _, _, profiles, profile, options = resolve(
        "--job", str(job), "--iterations", "7", "--noise", "0.25", "--straggler-prob", "0.5",
        "--straggler-slowdown", "2.5", "--seed", "9", "--sharing", "equal", "--resolution", "0.001",
        "--steady-state", "--sync", "asp")
    assert (options.iterations, options.noise_sigma, options.straggler_prob, options.straggler_slowdown) == \
        (7, 0.25, 0.5, 2.5)
    assert (options.seed, options.sharing, options.resolution_s, options.steady_state) == (9, "equal", 0.001, True)
    assert (options.sync, options.staleness, options.bucket_mb, options.codec) == ("asp", 0, 0.5, "int8")
    assert profile.params == 64 * 256 + 256 + 256 * 10 + 10 and "scaled" in profile.note
    assert profiles.source == str(ROOT / "hpcps/sim/profiles.toml") and loaded.model == {"hidden": 256}
    *_, options = resolve()
    assert (options.steady_state, options.resolution_s, options.sharing) == (False, None, "maxmin")


def test_another_profiles_file_is_used(tmp_path, capsys):
    own = tmp_path / "mine.toml"
    own.write_text((ROOT / "hpcps/sim/profiles.toml").read_text().replace("params = 9610", "params = 9610\n"
                                                                           "forward_fraction = 0.5"))
    *_, profiles, profile, _ = resolve("--profiles", str(own))
    assert profiles.source == str(own) and profile.forward_fraction == 0.5
    assert main(["--cluster", HETERO8, "--profiles", str(own), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["profiles"] == str(own)
