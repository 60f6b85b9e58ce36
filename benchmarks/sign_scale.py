"""The sign codec's scale and chunk: which one a chunk's signs should come back at.

    .venv/bin/python benchmarks/sign_scale.py            # writes results/sign_scale.{md,json}

The digits job (jobs/default.toml: MLP, SGD lr 0.1 momentum 0.9, global batch 64, 6 epochs) with four
workers of 16 samples each and one server, the exchange's arithmetic done in one process: each worker's
gradient goes through hpcps's own error-feedback encoder and decoder (hpcps.ps.codec), the server
averages the decoded pushes and steps its momentum SGD. No MPI and no timing: what is compared is
what the codec does to learning, deterministically per seed (the order of the data and the initial
parameters; the partition of a global batch among the workers is not the runtime's, so a seed's figure
is not the runtime's). Test accuracy at the end, seeds 0-99 (three seeds of digits spread by about
a point, float32's own included: a tenth of a point needs about a hundred), for:
- none (float32);
- sign with a float32 scale per chunk, the mean |x| (the scale closest to the values in squared
  error) or the root mean square (a decoded chunk as long as the chunk), at chunks of 64, 128, 256;
- sign with a bfloat16 scale per chunk, the root mean square, at chunks of 32, 64 (the codec as
  hpcps ships it) and 128.
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
BF16_CHUNKS = (32, 64, 128)


class Float32ScaleSignCodec(SignCodec):
    """The sign codec with a float32 scale per chunk, the root mean square: 4 bytes of scale a chunk."""

    def wire_nbytes(self, n: int) -> int:
        return -(-n // 8) + 4 * self.n_chunks(n)

    def _split(self, wire, n):
        k = 4 * self.n_chunks(n)
        return wire[:k], wire[k:]

    def scales(self, wire, n):
        return self._split(wire, n)[0].view(np.float32)

    def scale_of_chunks(self, acc, scratch) -> np.ndarray:
        np.multiply(acc, acc, out=scratch)
        return np.sqrt(self._chunk_means(scratch))

    def _chunk_means(self, x) -> np.ndarray:
        full, tail = _chunks(x, self.chunk)
        out = np.empty(self.n_chunks(x.shape[0]), np.float32)
        if full.size:
            out[:full.shape[0]] = full.mean(axis=1, dtype=np.float32)
        if tail.size:
            out[-1] = tail.mean(dtype=np.float32)
        return out

    def compress(self, acc, wire, scratch) -> None:
        n = acc.shape[0]
        _, bits = self._split(wire, n)
        self.scales(wire, n)[:] = self.scale_of_chunks(acc, scratch)
        bits[:] = np.packbits(acc >= 0)


class MeanAbsSignCodec(Float32ScaleSignCodec):
    """A float32 scale per chunk, its mean |x| (the alternative to the RMS)."""

    def scale_of_chunks(self, acc, scratch) -> np.ndarray:
        np.abs(acc, out=scratch)
        return self._chunk_means(scratch)


def make(scale: str, chunk: int) -> SignCodec:
    codec = {"mean_abs": MeanAbsSignCodec, "rms": Float32ScaleSignCodec, "rms_bf16": SignCodec}[scale]()
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
    p.add_argument("--seeds", type=int, default=100, help="seeds 0..N-1 (default 100)")
    p.add_argument("--out", type=Path, default=ROOT / "results", help="folder for sign_scale.{md,json}")
    args = p.parse_args()
    torch.set_num_threads(1)
    context = facts()
    variants = ([("none", None, None)] + [(s, s, c) for s in ("mean_abs", "rms") for c in CHUNKS]
                + [("rms_bf16", "rms_bf16", c) for c in BF16_CHUNKS])
    rows = []
    for name, scale, chunk in variants:
        codec = make(scale, chunk) if scale else None
        acc = [train(codec, seed) for seed in range(args.seeds)]
        bytes_per_value = codec.wire_nbytes(1 << 20) / (1 << 20) if codec else 4.0
        rows.append({"scale": name, "chunk": chunk, "accuracy": acc, "mean": float(np.mean(acc)),
                     "fewer_bytes_x": 4.0 / bytes_per_value})
        print(f"sign_scale: {name} chunk {chunk}: mean {100 * np.mean(acc):.2f}%", file=sys.stderr, flush=True)
    base = np.array(rows[0]["accuracy"])
    for r in rows:
        gap = 100 * (base - np.array(r["accuracy"]))          # per seed: the same data order and start
        r["points_below_none"] = float(gap.mean())
        r["points_below_none_se"] = float(gap.std(ddof=1) / np.sqrt(gap.size)) if gap.size > 1 else float("nan")
    context["load_average_at_end"] = load_average()
    command = command_line([".venv/bin/python", "benchmarks/sign_scale.py", *sys.argv[1:]])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sign_scale.json").write_text(json.dumps({"command": command, "machine": context, "rows": rows},
                                                         indent=1) + "\n")
    lines = ["# The sign codec's scale", "", f"Command: `{command}`", "", facts_markdown(context), "",
             (__doc__ or "").split("\n\n", 2)[2].strip(), "",
             "| scale | chunk | fewer bytes than float32 | mean test accuracy | points below none | "
             "its standard error | first 10 seeds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['scale']} | {r['chunk'] or '-'} | {r['fewer_bytes_x']:.1f}x | {100 * r['mean']:.2f}% | "
                     f"{r['points_below_none']:+.2f} | {r['points_below_none_se']:.2f} | "
                     f"{', '.join(f'{100 * a:.1f}' for a in r['accuracy'][:10])} |")
    lines += ["", "Standard error: of the mean over seeds of each seed's accuracy below none's (the seeds pair "
              "the runs). Every seed's accuracy is in results/sign_scale.json."]
    (args.out / "sign_scale.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
