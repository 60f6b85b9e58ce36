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

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcps.config import limits
from hpcps.config.errors import ConfigError
from hpcps.config.toml_schema import Key, check_number, check_type, read_toml, take_table

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

    def __post_init__(self) -> None:
        # Profiles read from files are checked key by key (read_profiles); this catches one built in code.
        # A NaN here would not fail anywhere downstream: a NaN time or ready fraction never comes due, and
        # the simulator's event loop would wait for it for ever.
        for name, low, high in (("fixed_s", 0.0, math.inf), ("per_sample_s", 0.0, math.inf),
                                ("fixed_parallel", 0.0, 1.0), ("per_sample_parallel", 0.0, 1.0),
                                ("oversubscription", 0.0, math.inf), ("activation_bytes_per_sample", 0.0, math.inf),
                                ("forward_fraction", 0.0, 1.0)):
            value = getattr(self, name)
            if not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"workload profile {self.name}: {name} must be a finite number in "
                                 f"[{low:g}, {high:g}], got {value!r}")

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
    # push codecs (hpcps/ps/codec.py): seconds per float32 value to encode one push on the worker
    # (error feedback included) and to decode it on the server, by codec; none costs nothing
    codec_s_per_element: tuple[tuple[str, tuple[float, float]], ...] = ()
    # server: one aggregation's cost apart from its bytes (a call into torch, the finiteness check, the
    # optimiser's step), as a server pays it after waiting for pushes asleep: 0.6-0.9 ms here whatever
    # the piece's size (results/aggregate_cost.md), where the per-byte terms give microseconds
    aggregate_fixed_s: float = 0.0

    def update_cost(self, optimizer: str) -> float:
        table = dict(self.update_s_per_byte)
        return table.get(optimizer, max(table.values()))

    def codec_cost(self, codec: str) -> tuple[float, float]:
        """(encode, decode) seconds per value for codec; (0, 0) when not calibrated."""
        return dict(self.codec_s_per_element).get(codec, (0.0, 0.0))

    def uncalibrated_codecs(self, codecs) -> list[str]:
        """The lossy codecs among codecs (sorted, once each) this profile has no cost for: counted as free."""
        return sorted({c for c in codecs if c and c != "none"} - dict(self.codec_s_per_element).keys())

    def codec_note(self, codecs) -> str | None:
        """The note a result carries when some of its codecs are charged nothing for want of calibration."""
        missing = self.uncalibrated_codecs(codecs)
        if not missing:
            return None
        return (f"has no calibrated cost for codec {', '.join(missing)}: encoding and decoding counted as free "
                "(benchmarks/calibrate_compute.py measures them on the machine speed 1.0 stands for)")


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
    return WorkloadProfile(name, int(t["params"]), fixed[i1], per[i1], q, q, oversub,
                           float(t["activation_bytes_per_sample"]), tuple(sorted(t["model"].items())),
                           tuple(sorted(t["data"].items())), forward_fraction=forward)


# What a profiles file must hold, with the limits that keep the simulator's arithmetic finite (a zero
# copy rate or a NaN step time used to make it run forever). Other top-level keys are the calibration's
# notes (host, date, load) and are not checked.
_MACHINE_SPEC = {
    "memcpy_bytes_per_s": Key(float, ge=limits.MIN_MEMCPY_BYTES_PER_S, le=limits.MAX_MEMCPY_BYTES_PER_S),
    "aggregate_s_per_byte_per_worker": Key(float, ge=0, le=limits.MAX_SECONDS_PER_BYTE),
    "update_s_per_byte": Key(dict),
    "rank_overhead_bytes": Key(float, 0.0, ge=0, le=limits.MAX_BYTES),
    "codec_s_per_element": Key(dict, {}),     # codec -> [encode, decode] seconds per value
    "aggregate_fixed_s": Key(float, 0.0, ge=0, le=limits.MAX_STEP_S),   # absent in older calibrations
}
_WORKLOAD_SPEC = {
    "params": Key(int, gt=0, le=limits.MAX_PARAMS),
    "model": Key(dict, {}),
    "data": Key(dict, {}),
    "activation_bytes_per_sample": Key(float, ge=0, le=limits.MAX_BYTES),
    "batches": Key(list),
    "threads": Key(list),
    "times_s": Key(list),
    "fixed_s": Key(list),
    "per_sample_s": Key(list),
    "forward_fraction": Key(float, DEFAULT_FORWARD_FRACTION, ge=0, le=1),
}


def _numbers(source: str, key: str, values: Any, typ: type, n: int | None = None, **bounds) -> list:
    if not isinstance(values, list) or not values or (n is not None and len(values) != n):
        size = f"{n} " if n is not None else ""
        raise ConfigError(source, key, f"must be an array of {size}numbers, got {values!r}"[:300])
    return [check_number(source, f"{key}[{i}]", check_type(source, f"{key}[{i}]", v, typ), **bounds)
            for i, v in enumerate(values)]


def _check_workload(source: str, name: str, table: Any) -> dict[str, Any]:
    prefix = f"workloads.{name}"
    t = take_table(source, prefix, table, _WORKLOAD_SPEC)
    threads = _numbers(source, f"{prefix}.threads", t["threads"], int, ge=1, le=limits.MAX_THREADS)
    if 1 not in threads or 2 not in threads or len(set(threads)) != len(threads):
        raise ConfigError(source, f"{prefix}.threads", f"must list 1 and 2 threads, each once; got {threads}")
    batches = _numbers(source, f"{prefix}.batches", t["batches"], int, ge=1, le=limits.MAX_BATCH)
    times = t["times_s"]
    if not isinstance(times, list) or len(times) != len(threads):
        raise ConfigError(source, f"{prefix}.times_s", f"must hold one array per thread count ({len(threads)})")
    for i, row in enumerate(times):
        _numbers(source, f"{prefix}.times_s[{i}]", row, float, len(batches), gt=0, le=limits.MAX_STEP_S)
    t["times_s"] = [[float(x) for x in row] for row in times]
    for k in ("fixed_s", "per_sample_s"):
        t[k] = _numbers(source, f"{prefix}.{k}", t[k], float, len(threads), ge=0, le=limits.MAX_STEP_S)
    i1 = threads.index(1)
    if t["fixed_s"][i1] + t["per_sample_s"][i1] <= 0:
        raise ConfigError(source, f"{prefix}.per_sample_s", "a step cannot take no time: fixed_s and "
                                                            "per_sample_s with one thread are both 0")
    return t


_TOP_SPEC = {"cpus": Key(int, ge=1, le=limits.MAX_CORES), "machine": Key(dict), "workloads": Key(dict),
             "command": Key(str, "")}


def profiles_path(path: str | Path | None = None) -> Path:
    """The file load_profiles(path) reads: path, else $HPCPS_PROFILES, else the bundled one. An input
    of every command that simulates, so that none writes over it (the bundled one included)."""
    return Path(path or os.environ.get("HPCPS_PROFILES") or DEFAULT_PROFILES)


def load_profiles(path: str | Path | None = None) -> Profiles:
    """Read profiles.toml: path, else the file named by the environment variable HPCPS_PROFILES (a
    calibration of one's own machine, docs/sim.md), else the bundled one. A missing or malformed file,
    or one with a value out of range, is a ConfigError naming the file and key (rerun the calibration)."""
    from_env = path is None and bool(os.environ.get("HPCPS_PROFILES"))
    path = profiles_path(path)
    source = str(path)
    named = " (named by HPCPS_PROFILES)" if from_env else ""
    try:
        raw = read_toml(path)
    except ConfigError as e:
        if e.message == "file not found":
            raise ConfigError(source, None, f"compute profiles not found{named}; run "
                                            "benchmarks/calibrate_compute.py") from None
        raise ConfigError(source, None, f"not a compute profile file{named}: {e.message}; rerun "
                                        "benchmarks/calibrate_compute.py") from None
    try:
        # The other top-level keys are the calibration's notes (host, date, load): not checked.
        top = take_table(source, "", {k: v for k, v in raw.items() if k in _TOP_SPEC}, _TOP_SPEC)
        m = take_table(source, "machine", top["machine"], _MACHINE_SPEC)
        updates = m["update_s_per_byte"]
        if not updates:
            raise ConfigError(source, "machine.update_s_per_byte", "must give the cost of at least one optimiser")
        for k, v in updates.items():
            key = f"machine.update_s_per_byte.{k}"
            updates[k] = check_number(source, key, check_type(source, key, v, float), ge=0,
                                      le=limits.MAX_SECONDS_PER_BYTE)
        codecs = {}
        for k, v in m["codec_s_per_element"].items():
            key = f"machine.codec_s_per_element.{k}"
            enc, dec = _numbers(source, key, v, float, 2, ge=0, le=limits.MAX_SECONDS_PER_BYTE)
            codecs[k] = (enc, dec)
        machine = MachineProfile(m["memcpy_bytes_per_s"], m["aggregate_s_per_byte_per_worker"],
                                 tuple(sorted(updates.items())), m["rank_overhead_bytes"],
                                 tuple(sorted(codecs.items())), m["aggregate_fixed_s"])
        if not top["workloads"]:
            raise ConfigError(source, "workloads", "must hold one table per profiled workload")
        workloads = tuple(_workload_from(name, _check_workload(source, name, t), top["cpus"])
                          for name, t in top["workloads"].items())
    except ConfigError as e:
        raise ConfigError(e.source, e.key, f"{e.message} (not a compute profile file{named}: rerun "
                                           "benchmarks/calibrate_compute.py)") from None
    return Profiles(machine, workloads, top["command"], source)


def count_parameters(workload: str, model: dict, data: dict) -> int:
    """Trainable parameters of the workload's model with these options: counted from the architecture
    for a built-in workload, else by building the model (this imports PyTorch and loads the data)."""
    from hpcps.workloads.specs import model_parameters
    n = model_parameters(workload, model, data)
    if n is not None:
        return n
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

