# make demo / make test work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MPIEXEC := $(VENV)/bin/mpiexec
STAMP := $(VENV)/.installed
# The MPI wheel to install; MPI=none uses the mpicc/mpiexec already on PATH (a cluster's own MPI).
MPI ?= mpich

.PHONY: venv demo test lint format-check test-unit test-fuzz test-mpi test-e2e test-slurm test-testbed slurm-deps testbed-deps bench mutation mutation-sample clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch is pinned to the CPU wheel; an unpinned torch pulls several GB of CUDA packages.
	$(PY) -m pip install --quiet "torch==2.13.0"
ifeq ($(MPI),none)
	env MPICC=$$(command -v mpicc) $(PY) -m pip install --quiet --no-binary=mpi4py -e ".[test]"
else
	$(PY) -m pip install --quiet -e ".[test,$(MPI)]"
endif
	touch $(STAMP)

# A short structured tuning run with real MPI trials on the emulated hetero8 cluster (docs/tune.md):
# about 30 s a trial here; then the best schedule and its measured speed-up over the naive one.
DEMO_STAMP := $(shell date +%Y%m%d-%H%M%S)
DEMO_OUT ?= results/runs/demo-$(DEMO_STAMP)
demo: $(STAMP)
	$(PY) -m hpcps.tune --job jobs/hetero8.toml --backend local --strategy structured --budget 6 \
		--iterations 10 --out $(DEMO_OUT)
	@echo "best schedule ($(DEMO_OUT)/best_schedule.toml):"
	@cat $(DEMO_OUT)/best_schedule.toml

test: $(STAMP) slurm-deps testbed-deps
	$(MAKE) lint test-unit test-fuzz test-mpi test-e2e test-slurm test-testbed

# Mutation testing of hpcps/ps, sim, emulate, comm and tune/models against the unit tests ([tool.mutmut] in
# pyproject.toml); not part of make test: hours on 2 cores. MUTANTS='hpcps.sim.*' runs one package's.
# Writes results/mutation.md (benchmarks/mutation_report.py).
MUTANTS ?=
mutation: $(STAMP)
	$(VENV)/bin/pip install -q 'mutmut>=3.3'
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children $$(nproc) $(MUTANTS) || true
	$(PY) benchmarks/mutation_report.py --command "make mutation$(if $(MUTANTS), MUTANTS='$(MUTANTS)')"

# Where the whole census takes longer than there is: SAMPLE_SIZE mutants drawn at random from each package's
# not run yet (benchmarks/mutation_sample.py), run, and the report's estimate of every package's score from
# them. Keeps mutants/ (and its results) between runs; the first run generates it, with hpcps/comm's run.
SAMPLE_SIZE ?= 150
SAMPLE_SEED ?= 0
mutation-sample: $(STAMP)
	$(VENV)/bin/pip install -q 'mutmut>=3.3'
	test -d mutants || $(VENV)/bin/mutmut run --max-children $$(nproc) 'hpcps.comm.*' || true
	$(PY) benchmarks/mutation_sample.py --size $(SAMPLE_SIZE) --seed $(SAMPLE_SEED)
	$(PY) benchmarks/mutation_report.py --command "make mutation-sample SAMPLE_SIZE=$(SAMPLE_SIZE) SAMPLE_SEED=$(SAMPLE_SEED)"

# Lint (ruff's rules in pyproject.toml) of the package, its tests and the benchmarks, and type checks
# of the package; first of the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check hpcps tests benchmarks
	$(VENV)/bin/mypy hpcps

# The code's layout as ruff format writes it; not yet part of make test.
format-check: $(STAMP)
	$(VENV)/bin/ruff format --check hpcps

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

# Generated and damaged inputs for every loader and command (hypothesis, derandomized): each ends in
# exit status 0 or 2 with one line, never a traceback or a hang (docs/reliability.md). About a minute.
test-fuzz: $(STAMP)
	$(PY) -m pytest -q tests/fuzz

# The MPI tests run at two communicator sizes: with servers colocated on worker ranks, and apart.
test-mpi: $(STAMP)
	$(MPIEXEC) -n 3 $(PY) -m pytest -q --with-mpi -p no:cacheprovider tests/mpi
	$(MPIEXEC) -n 5 $(PY) -m pytest -q --with-mpi -p no:cacheprovider tests/mpi

test-e2e: $(STAMP)
	$(PY) -m pytest -q tests/e2e

# Real-Slurm tests on a throw-away Slurm on localhost (tests/slurm/local_cluster.py, docs/slurm.md), the
# tuning test also with every slurmd on a testbed node. HPCPS_REQUIRE_SLURM=1 makes a missing Slurm a
# failure, not a skip; HPCPS_REQUIRE_TESTBED=1 likewise a testbed that cannot be built.
test-slurm: $(STAMP) slurm-deps testbed-deps
	HPCPS_REQUIRE_SLURM=1 HPCPS_REQUIRE_TESTBED=1 $(PY) -m pytest -q tests/slurm

# Real network namespaces, shaped links and MPI over TCP (tests/testbed, docs/testbed.md). They need
# root: as root a testbed that cannot be built fails them (HPCPS_REQUIRE_TESTBED=1); otherwise they skip.
test-testbed: $(STAMP)
	@if [ "$$(id -u)" = 0 ]; then export HPCPS_REQUIRE_TESTBED=1; fi; $(PY) -m pytest -q tests/testbed

# Debian's Slurm and munge for the Slurm tests, installed only when slurmctld is missing (needs root).
slurm-deps:
	@PATH="$$PATH:/usr/sbin:/sbin"; command -v slurmctld >/dev/null && command -v munged >/dev/null || { \
	  if [ "$$(id -u)" != 0 ]; then echo "make slurm-deps: Slurm is not installed; as root: apt-get install slurm-wlm munge" >&2; exit 1; fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge; }

# iproute2, util-linux and iptables for the testbed (docs/testbed.md), installed only when missing and
# only as root (without root the testbed tests skip).
testbed-deps:
	@PATH="$$PATH:/usr/sbin:/sbin"; command -v ip >/dev/null && command -v tc >/dev/null && command -v nsenter >/dev/null \
	  && command -v iptables-restore >/dev/null || { \
	  if [ "$$(id -u)" != 0 ]; then echo "make testbed-deps: not root: the testbed tests will skip" >&2; exit 0; fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 util-linux iptables; }

# Results go to results/ (each table with the command that reproduces it). hpcps against DDP and
# mpi4py Allreduce at 78k and 11M parameters, three sittings each: about 15 minutes.
bench: $(STAMP)
	$(PY) benchmarks/ps_vs_ddp.py
	$(PY) benchmarks/ps_vs_ddp.py --job jobs/cifar-wide.toml --warmup 2 --iterations 6 --window 2

clean:
	rm -rf $(VENV) build *.egg-info
