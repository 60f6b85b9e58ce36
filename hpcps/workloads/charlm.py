"""A character-level LSTM language model on a corpus that ships with Python: its documentation topics.

pydoc_data.topics holds the text of the language reference that `help()` shows: some 800 kB of
English prose and code, in every CPython install, so the workload needs no download.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hpcps.workloads.base import Workload, device_of
from hpcps.workloads.specs import charlm_split, python_corpus, with_defaults


class _CharLSTM(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        out, state = self.lstm(self.embed(x), state)
        return self.head(out), state


class CharLMWorkload(Workload):
    name = "charlm"

    def __init__(self, model: dict, data: dict, seed: int):
        model, data = with_defaults(self.name, model, data)
        self.opts = dict(model)
        self.seq_len = data["seq_len"]
        self.sample_chars = data["sample_chars"]
        self.seed = seed
        text = python_corpus(data["corpus_chars"])
        self.vocab = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.vocab)}
        codes = torch.tensor([self.stoi[c] for c in text], dtype=torch.int64)
        n_train, _ = charlm_split(len(codes), self.seq_len)
        self.train_codes, self.val_codes = codes[:n_train], codes[n_train:]
        # A sample is the window starting at a multiple of seq_len: windows never overlap within an epoch.
        self.starts = torch.arange(0, max(0, len(self.train_codes) - self.seq_len - 1), self.seq_len)

    def n_train(self) -> int:
        return len(self.starts)

    def targets_per_sample(self) -> int:
        return self.seq_len

    def get_batch(self, indices: np.ndarray):
        starts = self.starts[torch.from_numpy(np.asarray(indices, dtype=np.int64))]
        offsets = torch.arange(self.seq_len + 1)
        windows = self.train_codes[starts[:, None] + offsets[None, :]]
        return windows[:, :-1], windows[:, 1:]

    def build_model(self) -> nn.Module:
        return _CharLSTM(len(self.vocab), self.opts["embed"], self.opts["hidden"], self.opts["layers"])

    def loss(self, model, batch):
        x, y = batch
        logits, _ = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        correct = (logits.detach().argmax(dim=-1) == y).sum().item()
        return loss, float(correct)

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        n = (len(self.val_codes) - 1) // self.seq_len
        windows = self.val_codes[: n * self.seq_len + 1]
        x = windows[:-1].reshape(n, self.seq_len)
        y = windows[1:].reshape(n, self.seq_len)
        dev = device_of(model)
        x, y = x.to(dev), y.to(dev)
        logits, _ = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        acc = (logits.argmax(dim=-1) == y).float().mean()
        return {"val_loss": float(loss), "val_bits_per_char": float(loss) / float(np.log(2)),
                "val_accuracy": float(acc)}

    @torch.no_grad()
    def finish(self, model) -> str:
        g = torch.Generator().manual_seed(self.seed)
        prompt = "The "
        dev = device_of(model)
        x = torch.tensor([[self.stoi.get(c, 0) for c in prompt]], device=dev)
        out, state = list(prompt), None
        for _ in range(self.sample_chars):
            logits, state = model(x, state)
            probs = torch.softmax(logits[0, -1] / 0.8, dim=0).cpu()   # the generator is a CPU one
            nxt = int(torch.multinomial(probs, 1, generator=g))
            out.append(self.vocab[nxt])
            x = torch.tensor([[nxt]], device=dev)
        return "".join(out)
