"""The job and cluster files the project ships load, and every one the documentation names exists."""

import re
from pathlib import Path

import pytest

from hpcps.cluster import load_cluster
from hpcps.config import load_job

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("path", sorted((ROOT / "jobs").glob("*.toml")), ids=lambda p: p.name)
def test_every_bundled_job_loads(path):
    job = load_job(path)
    assert job.training.global_batch >= 1
    if job.cluster is not None:
        load_cluster(path.parent / job.cluster)


@pytest.mark.parametrize("path", sorted((ROOT / "jobs" / "clusters").glob("*.toml")), ids=lambda p: p.name)
def test_every_bundled_cluster_loads(path):
    assert len(load_cluster(path)) >= 1


def test_the_charlm_job_is_the_charlm_workload():
    job = load_job(ROOT / "jobs" / "charlm.toml")
    assert job.workload == "charlm" and job.optimizer.name == "adam"


def test_every_job_and_cluster_file_the_documentation_names_exists():
    named = {m for doc in DOCS for m in re.findall(r"\bjobs/(?:clusters/)?[\w.-]+\.toml\b", doc.read_text())}
    assert "jobs/charlm.toml" in named
    missing = sorted(m for m in named if not (ROOT / m).is_file())
    assert not missing, f"named in README.md or docs/ but not in the project: {missing}"
