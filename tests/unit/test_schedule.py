import pytest

from hpcps.config import ConfigError, default_schedule, load_schedule
from hpcps.config.schedule import Schedule, WorkerSpec, parse_schedule, split_evenly


def write(tmp_path, text):
    p = tmp_path / "schedule.toml"
    p.write_text(text)
    return p


def test_default_schedule_uses_every_rank_and_sums_to_the_global_batch():
    s = default_schedule(16, 100)
    assert [w.rank for w in s.workers] == list(range(16))
    assert s.global_batch == 100
    assert max(w.batch for w in s.workers) - min(w.batch for w in s.workers) <= 1
    assert s.servers == (0, 1, 2, 3)
    assert default_schedule(2, 64).servers == (0,)


def test_default_schedule_never_gives_a_worker_an_empty_batch():
    s = default_schedule(8, 3)
    assert [w.batch for w in s.workers] == [1, 1, 1]


def test_split_evenly():
    assert split_evenly(10, 3) == [4, 3, 3]
    assert sum(split_evenly(1001, 7)) == 1001


def test_schedule_file_round_trips(tmp_path):
    s = Schedule((0, 2), (WorkerSpec(0, 5, 1), WorkerSpec(1, 17, 2), WorkerSpec(3, 42, 1)))
    again = load_schedule(write(tmp_path, s.to_toml()))
    assert again.servers == s.servers and again.workers == s.workers


@pytest.mark.parametrize("text, key, words", [
    ("servers = []\n[[workers]]\nrank = 0\nbatch = 4\n", "servers", "no parameter server"),
    ("servers = [0]\nworkers = []\n", "workers", "no worker"),
    ("servers = [0]\n[[workers]]\nrank = 0\nbatch = 0\n", "workers[0].batch", "> 0"),
    ("servers = [0]\n[[workers]]\nrank = 0\nbatch = 4\nthreads = 0\n", "workers[0].threads", "> 0"),
    ("servers = [0]\n[[workers]]\nrank = 0\nbatch = 'four'\n", "workers[0].batch", "integer"),
    ("servers = [0]\n[[workers]]\nrank = 0\nbatch = 4\ncolour = 1\n", "workers[0].colour", "Valid keys are: rank"),
    ("servers = [0, 0]\n[[workers]]\nrank = 0\nbatch = 4\n", "servers", "twice"),
    ("servers = [-1]\n[[workers]]\nrank = 0\nbatch = 4\n", "servers[0]", ">= 0"),
    ("servers = [0]\n[[workers]]\nrank = 0\nbatch = 4\n[[workers]]\nrank = 0\nbatch = 4\n", "workers", "two"),
    ("servers = [0]\n", "workers", "required"),
])
def test_bad_schedules_name_the_key(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_schedule(path)
    assert e.value.key == key
    assert str(path) in str(e.value) and words in str(e.value)


def test_schedule_naming_more_ranks_than_launched():
    s = parse_schedule({"servers": [0], "workers": [{"rank": 0, "batch": 2}, {"rank": 5, "batch": 2}]}, "s.toml")
    s.check_against(6, 4)
    with pytest.raises(ConfigError, match=r"workers\[1\].rank.*rank 5 but only 4 ranks"):
        s.check_against(4, 4)
    s2 = parse_schedule({"servers": [7], "workers": [{"rank": 0, "batch": 4}]}, "s.toml")
    with pytest.raises(ConfigError, match=r"servers\[0\]"):
        s2.check_against(4, 4)


def test_schedule_batches_must_match_the_global_batch():
    s = parse_schedule({"servers": [0], "workers": [{"rank": 0, "batch": 3}]}, "s.toml")
    with pytest.raises(ConfigError, match="sum to 3 but .*global_batch is 4"):
        s.check_against(1, 4)


@pytest.mark.parametrize("text, key, words", [
    ("servers = [0]\n[[workers]]\nrank = 0\nbatch = 4\nthreads = 100000\n", "workers[0].threads", "<= 512"),
    ("servers = [0]\n[[workers]]\nrank = 0\nbatch = 20000000\n", "workers[0].batch", "<= 10000000"),
    ("servers = [0]\n" + "[[workers]]\nrank = 0\nbatch = 9000000\n[[workers]]\nrank = 1\nbatch = 9000000\n",
     "workers.batch", "sum to 18000000"),
    ("servers = [10000000]\n[[workers]]\nrank = 0\nbatch = 4\n", "servers[0]", "< 1000000"),
    ("servers = [0]\n[[workers]]\nrank = 0\nbatch = 4.0\n", "workers[0].batch", "must be an integer"),
])
def test_limits(tmp_path, text, key, words):
    with pytest.raises(ConfigError) as e:
        load_schedule(write(tmp_path, text))
    assert e.value.key == key and words in str(e.value)


def test_to_toml_is_read_back_by_tomllib():
    import tomllib
    s = Schedule((0,), (WorkerSpec(0, 5, 1), WorkerSpec(1, 3, 4)))
    assert tomllib.loads(s.to_toml()) == s.to_dict()
