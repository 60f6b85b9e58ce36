# make demo / make test work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MPIEXEC := $(VENV)/bin/mpiexec
STAMP := $(VENV)/.installed
# The MPI wheel to install; MPI=none uses the mpicc/mpiexec already on PATH (a cluster's own MPI).
MPI ?= mpich

.PHONY: venv demo test test-unit test-mpi test-e2e test-slurm slurm-deps bench clean

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

test: $(STAMP) slurm-deps
	$(MAKE) test-unit test-mpi test-e2e test-slurm

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

# The MPI tests run at two communicator sizes: with servers colocated on worker ranks, and apart.
test-mpi: $(STAMP)
	$(MPIEXEC) -n 3 $(PY) -m pytest -q --with-mpi -p no:cacheprovider tests/mpi
	$(MPIEXEC) -n 5 $(PY) -m pytest -q --with-mpi -p no:cacheprovider tests/mpi

test-e2e: $(STAMP)
	$(PY) -m pytest -q tests/e2e

# Real-Slurm tests on a throw-away Slurm on localhost (tests/slurm/local_cluster.py, docs/slurm.md).
# HPCPS_REQUIRE_SLURM=1 makes a missing Slurm a failure, not a skip.
test-slurm: $(STAMP) slurm-deps
	HPCPS_REQUIRE_SLURM=1 $(PY) -m pytest -q tests/slurm

# Debian's Slurm and munge for the Slurm tests, installed only when slurmctld is missing (needs root).
slurm-deps:
	@PATH="$$PATH:/usr/sbin:/sbin"; command -v slurmctld >/dev/null && command -v munged >/dev/null || { \
	  if [ "$$(id -u)" != 0 ]; then echo "make slurm-deps: Slurm is not installed; as root: apt-get install slurm-wlm munge" >&2; exit 1; fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge; }

# Results go to results/ (each table with the command that reproduces it). hpcps against DDP and
# mpi4py Allreduce at 78k and 11M parameters, three sittings each: about 15 minutes.
bench: $(STAMP)
	$(PY) benchmarks/ps_vs_ddp.py
	$(PY) benchmarks/ps_vs_ddp.py --job jobs/cifar-wide.toml --warmup 2 --iterations 6 --window 2

clean:
	rm -rf $(VENV) build *.egg-info
