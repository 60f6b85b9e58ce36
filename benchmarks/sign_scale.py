"""The sign codec's scale and chunk: which one a chunk's signs should come back at.

    .venv/bin/python benchmarks/sign_scale.py            # writes results/sign_scale.{md,json}

The digits job (jobs/default.toml: MLP, SGD lr 0.1 momentum 0.9, global batch 64, 6 epochs) with four
workers of 16 samples each and one server, the exchange's arithmetic done in one process: each worker's
gradient goes through hpcps's own error-feedback encoder and decoder (hpcps.ps.codec), the server
averages the decoded pushes and steps its momentum SGD. No MPI and no timing: what is compared is
what the codec does to learning, deterministically per seed (the order of the data and the initial
parameters; the partition of a global batch among the workers is not the runtime's, so a seed's figure
is not the runtime's). Test accuracy at the end, seeds 0-9, for:
- none (float32);
- sign with the scale of each chunk the mean |x| (the scale closest to the values in squared error)
  and with the root mean square (a decoded chunk as long as the chunk), at chunks of 64, 128, 256.
The figure set out to be measured: each variant's mean accuracy minus none's, in points. The runtime's
own figures (three seeds through mpiexec) are in results/codecs.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _machine import command_line, facts, facts_markdown, load_average  # noqa: E402

from hpcps.ps.codec import ErrorFeedbackEncoder, SignCodec, _chunks  # noqa: E402
from hpcps.workloads.digits import DigitsWorkload  # noqa: E402

WORKERS, GLOBAL_BATCH, EPOCHS, LR, MOMENTUM = 4, 64, 6, 0.1, 0.9
CHUNKS = (64, 128, 256)


class MeanAbsSignCodec(SignCodec):
    """The sign codec with the scale of each chunk its mean |x| (the alternative to the RMS)."""

    def compress(self, acc, wire, scratch) -> None:
        n = acc.shape[0]
        scales, bits = self._split(wire, n)
        np.abs(acc, out=scratch)
        full, tail = _chunks(scratch, self.chunk)
        if full.size:
            scales[:full.shape[0]] = full.mean(axis=1, dtype=np.float32)
        if tail.size:
            scales[-1] = tail.mean(dtype=np.float32)
        bits[:] = np.packbits(acc >= 0)


def make(scale: str, chunk: int) -> SignCodec:
    codec = MeanAbsSignCodec() if scale == "mean_abs" else SignCodec()
    codec.chunk = chunk
    return codec


def train(codec: SignCodec | None, seed: int) -> float:
    torch.manual_seed(seed)
    work = DigitsWorkload({"hidden": 128}, {}, seed)
    model = work.build_model()
    params = list(model.parameters())
    flat = torch.cat([p.data.reshape(-1) for p in params]).numpy().copy()
    n = flat.size
    encoders = [ErrorFeedbackEncoder(codec, n) for _ in range(WORKERS)] if codec else None
    decoded = np.empty(n, np.float32)
    velocity = np.zeros(n, np.float32)
    rng = np.random.default_rng(seed)
    per_worker = GLOBAL_BATCH // WORKERS

    def load(values):
        i = 0
        for p in params:
            p.data.copy_(torch.from_numpy(values[i:i + p.numel()]).reshape(p.shape))
            i += p.numel()

    for _ in range(EPOCHS):
        order = rng.permutation(work.n_train())
        for it in range(work.n_train() // GLOBAL_BATCH):
            update = np.zeros(n, np.float32)
            for w in range(WORKERS):
                start = it * GLOBAL_BATCH + w * per_worker
                load(flat)
                model.zero_grad()
                loss, _ = work.loss(model, work.get_batch(order[start:start + per_worker]))
                loss.backward()
                grad = torch.cat([p.grad.reshape(-1) for p in params]).numpy()
                if codec is None:
                    decoded[:] = grad
                else:
                    codec.decode_into(encoders[w].encode(grad), decoded)
                update += decoded / WORKERS
            velocity = MOMENTUM * velocity + update
            flat -= LR * velocity
    load(flat)
    return work.evaluate(model)["test_accuracy"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    p.add_argument("--out", type=Path, default=ROOT / "results", help="folder for sign_scale.{md,json}")
    args = p.parse_args()
    torch.set_num_threads(1)
    context = facts()
    variants = [("none", None, None)] + [(s, s, c) for s in ("mean_abs", "rms") for c in CHUNKS]
    rows = []
    for name, scale, chunk in variants:
        codec = make(scale, chunk) if scale else None
        acc = [train(codec, seed) for seed in range(args.seeds)]
        bytes_per_value = codec.wire_nbytes(1 << 20) / (1 << 20) if codec else 4.0
        rows.append({"scale": name, "chunk": chunk, "accuracy": acc, "mean": float(np.mean(acc)),
                     "fewer_bytes_x": 4.0 / bytes_per_value})
        print(f"sign_scale: {name} chunk {chunk}: mean {100 * np.mean(acc):.2f}%", file=sys.stderr, flush=True)
    base = rows[0]["mean"]
    for r in rows:
        r["points_below_none"] = 100 * (base - r["mean"])
    context["load_average_at_end"] = load_average()
    command = command_line([".venv/bin/python", "benchmarks/sign_scale.py", *sys.argv[1:]])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sign_scale.json").write_text(json.dumps({"command": command, "machine": context, "rows": rows},
                                                         indent=1) + "\n")
    lines = ["# The sign codec's scale", "", f"Command: `{command}`", "", facts_markdown(context), "",
             (__doc__ or "").split("\n\n", 2)[2].strip(), "",
             "| scale | chunk | fewer bytes than float32 | mean test accuracy | points below none | per seed |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['scale']} | {r['chunk'] or '-'} | {r['fewer_bytes_x']:.1f}x | {100 * r['mean']:.2f}% | "
                     f"{r['points_below_none']:+.2f} | {', '.join(f'{100 * a:.1f}' for a in r['accuracy'])} |")
    (args.out / "sign_scale.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
