"""Compute profiles: how long a training step takes on the calibration machine (speed 1.0), and what
servers and local copies cost there. Measured by benchmarks/calibrate_compute.py into profiles.toml.

A step of b samples with t threads on c free cores takes

    fixed(s) + per_sample(s) * b,   s = cores this worker gets (t, or less when the node's workers ask
                                        for more threads than it has cores)

where both terms follow Amdahl's law with the parallel fraction measured between 1 and 2 threads
(the median over batch sizes), and threads past the node's cores add the
oversubscription cost measured with twice as many threads as the calibration machine has cores.

A profile may also give `forward_fraction`, the share of a step before the backward pass starts
producing gradients (the simulator's and tuner's model of when pushes can start: hpcps.ps.plan
.ready_fractions). Without it, 1/3: a layer's backward pass computes the gradients of both its input
and its weights, each about the work of its forward pass, so the forward pass is about a third of a
step. The calibration does not measure it (cifar-resnet measured 0.36-0.38 here, batch 8, docs/sim.md).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcps.config.errors import ConfigError

DEFAULT_PROFILES = Path(__file__).with_name("profiles.toml")
DEFAULT_FORWARD_FRACTION = 1.0 / 3.0     # backward about twice the forward (see above)


def _parallel_fraction(t1: float, t2: float) -> float:
    """Amdahl's parallel fraction q from times with 1 and 2 threads: t2 / t1 = (1 - q) + q / 2."""
    if t1 <= 0:
        return 0.0
    return min(1.0, max(0.0, 2.0 * (1.0 - t2 / t1)))


def _amdahl(q: float, cores: float) -> float:
    """Time relative to one full core when the work gets `cores` cores (fewer than one: a time share)."""
    return (1.0 - q) / min(1.0, cores) + q / cores


@dataclass(frozen=True)
class WorkloadProfile:
    name: str
    params: int                        # float32 elements every pull and push moves in total
    fixed_s: float                     # one thread, speed 1.0
    per_sample_s: float
    fixed_parallel: float              # Amdahl fractions from the 2-thread fit
    per_sample_parallel: float
    oversubscription: float            # extra time per unit of threads/cores past 1
    activation_bytes_per_sample: float
    model: tuple[tuple[str, Any], ...] = ()
    data: tuple[tuple[str, Any], ...] = ()
    note: str = ""                     # how the profile was derived, when not measured as is
    forward_fraction: float = DEFAULT_FORWARD_FRACTION   # share of a step before gradients appear

    def step_time(self, batch: int, threads: int, cores: int, node_threads: int) -> float:
        """Seconds for one step at speed 1.0: batch samples, this worker's threads, the node's cores and
        the threads all workers on the node ask for (node_threads >= threads)."""
        ratio = node_threads / cores
        share = threads / max(1.0, ratio)
        t = (self.fixed_s * _amdahl(self.fixed_parallel, share)
             + self.per_sample_s * batch * _amdahl(self.per_sample_parallel, share))
        if ratio > 1:
            t *= 1.0 + self.oversubscription * (ratio - 1.0)
        return t

    def scaled(self, params: int, model: dict, data: dict) -> "WorkloadProfile":
        """This profile for other model options: compute and activations scaled by the parameter count
        (a rough proxy for the work per sample of the dense and recurrent layers the built-ins are made
        of) and by the sequence length where there is one."""
        f = params / self.params
        base_seq, seq = dict(self.data).get("seq_len"), data.get("seq_len")
        if base_seq and seq:
            f *= seq / base_seq
        return WorkloadProfile(self.name, params, self.fixed_s * f, self.per_sample_s * f, self.fixed_parallel,
                               self.per_sample_parallel, self.oversubscription,
                               self.activation_bytes_per_sample * f, tuple(sorted(model.items())),
                               tuple(sorted(data.items())),
                               f"scaled from the calibrated options ({self.params} parameters) by a factor {f:.3g}",
                               self.forward_fraction)


@dataclass(frozen=True)
class MachineProfile:
    memcpy_bytes_per_s: float              # a transfer between two ranks of one node
    aggregate_s_per_byte_per_worker: float  # server: weighted sum of the pushes
    update_s_per_byte: tuple[tuple[str, float], ...]  # server: optimiser step, by optimiser name
    rank_overhead_bytes: float             # memory of one idle rank (interpreter, PyTorch)

    def update_cost(self, optimizer: str) -> float:
        table = dict(self.update_s_per_byte)
        return table.get(optimizer, max(table.values()))


@dataclass(frozen=True)
class Profiles:
    machine: MachineProfile
    workloads: tuple[WorkloadProfile, ...]
    command: str
    source: str

    def workload(self, name: str) -> WorkloadProfile:
        for w in self.workloads:
            if w.name == name:
                return w
        raise ConfigError(self.source, "workload",
                          f"no compute profile for workload {name!r}; profiled: "
                          f"{', '.join(w.name for w in self.workloads)} (run benchmarks/calibrate_compute.py)")


def _workload_from(name: str, t: dict[str, Any], cpus: int) -> WorkloadProfile:
    threads = list(t["threads"])
    fixed, per = list(t["fixed_s"]), list(t["per_sample_s"])
    i1, i2 = threads.index(1), threads.index(2)
    # One parallel fraction for both terms, from the median over batch sizes of the 2-thread to
    # 1-thread time ratio: the ratio of two fitted intercepts near zero is mostly noise, and a median
    # shrugs off the odd run that a busy machine slowed.
    ratios = sorted(b / a for a, b in zip(t["times_s"][i1], t["times_s"][i2]))
    q = _parallel_fraction(1.0, ratios[len(ratios) // 2])
    oversub = 0.0
    over = [i for i, th in enumerate(threads) if th > cpus]
    if over:
        # Measured times with th > cpus threads against what the model says without the penalty.
        i = over[0]
        th = threads[i]
        probe = WorkloadProfile(name, 1, fixed[i1], per[i1], q, q, 0.0, 0.0)
        ratios = sorted(m / probe.step_time(b, th, cpus, th) for b, m in zip(t["batches"], t["times_s"][i]))
        oversub = max(0.0, (ratios[len(ratios) // 2] - 1.0) / (th / cpus - 1.0))
    forward = float(t.get("forward_fraction", DEFAULT_FORWARD_FRACTION))
    if not 0.0 <= forward <= 1.0:
        raise ValueError(f"workloads.{name}.forward_fraction must be in [0, 1], got {forward}")
    return WorkloadProfile(name, int(t["params"]), fixed[i1], per[i1], q, q, oversub,
                           float(t["activation_bytes_per_sample"]), tuple(sorted(t["model"].items())),
                           tuple(sorted(t["data"].items())), forward_fraction=forward)


def load_profiles(path: str | Path | None = None) -> Profiles:
    """Read profiles.toml: path, else the file named by the environment variable HPCPS_PROFILES (a
    calibration of one's own machine, docs/sim.md), else the bundled one. A missing or malformed file
    is a ConfigError (rerun the calibration)."""
    path = Path(path or os.environ.get("HPCPS_PROFILES") or DEFAULT_PROFILES)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
        m = raw["machine"]
        machine = MachineProfile(float(m["memcpy_bytes_per_s"]), float(m["aggregate_s_per_byte_per_worker"]),
                                 tuple(sorted((k, float(v)) for k, v in m["update_s_per_byte"].items())),
                                 float(m.get("rank_overhead_bytes", 0.0)))
        workloads = tuple(_workload_from(name, t, int(raw["cpus"])) for name, t in raw["workloads"].items())
        return Profiles(machine, workloads, str(raw.get("command", "")), str(path))
    except FileNotFoundError:
        raise ConfigError(str(path), None, "compute profiles not found; run benchmarks/calibrate_compute.py") from None
    except (tomllib.TOMLDecodeError, KeyError, ValueError, TypeError) as e:
        raise ConfigError(str(path), None, f"not a compute profile file ({type(e).__name__}: {e}); "
                          "rerun benchmarks/calibrate_compute.py") from None


def count_parameters(workload: str, model: dict, data: dict) -> int:
    """Build the workload's model (this imports PyTorch and loads the workload's data) and count."""
    from hpcps.workloads import build_workload
    m = build_workload(workload, model, data, seed=0).build_model()
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def profile_for_job(profiles: Profiles, workload: str, model: dict, data: dict) -> WorkloadProfile:
    """The profile of workload with these options: as measured when they are the calibrated ones,
    else scaled by parameter count (building the model once to count)."""
    base = profiles.workload(workload)
    if dict(base.model) == dict(model) and _model_relevant(base.data) == _model_relevant(data.items()):
        return base
    return base.scaled(count_parameters(workload, model, data), model, data)


# Data options that change the model's size or the work per sample; the rest (sample counts, test
# fractions) do not.
_SHAPE_KEYS = ("seq_len", "corpus_chars")


def _model_relevant(items) -> dict:
    return {k: v for k, v in dict(items).items() if k in _SHAPE_KEYS}

