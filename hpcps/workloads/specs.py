"""Options each built-in workload accepts in a job's [model] and [data] tables, and how many training
samples they give (plain data and arithmetic, no torch): the dataclasses are the format, each field a
key with its default and its range."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpcps.config import limits
from hpcps.config.toml_schema import defaults_of, option, spec_of

# scikit-learn's handwritten digits: 1797 images of 8x8 pixels.
DIGITS_SAMPLES = 1797


@dataclass(frozen=True)
class DigitsModel:
    hidden: int = option(128, gt=0, le=limits.MAX_WIDTH)


@dataclass(frozen=True)
class DigitsData:
    test_fraction: float = option(0.2, gt=0, lt=1)


@dataclass(frozen=True)
class CifarModel:
    width: int = option(16, gt=0, le=limits.MAX_WIDTH)
    blocks: int = option(1, gt=0, le=limits.MAX_LAYERS)


@dataclass(frozen=True)
class CifarData:
    samples: int = option(4096, gt=0, le=limits.MAX_SAMPLES)
    test_samples: int = option(512, gt=0, le=limits.MAX_SAMPLES)


@dataclass(frozen=True)
class CharLMModel:
    embed: int = option(32, gt=0, le=limits.MAX_WIDTH)
    hidden: int = option(128, gt=0, le=limits.MAX_WIDTH)
    layers: int = option(1, gt=0, le=limits.MAX_LAYERS)


@dataclass(frozen=True)
class CharLMData:
    seq_len: int = option(64, gt=0, le=limits.MAX_SEQ_LEN)
    corpus_chars: int = option(200_000, gt=0, le=limits.MAX_CHARS)
    sample_chars: int = option(200, gt=0, le=limits.MAX_CHARS)


OPTIONS = {
    "digits": (DigitsModel, DigitsData),
    "cifar-resnet": (CifarModel, CifarData),
    "charlm": (CharLMModel, CharLMData),
}
MODEL_SPECS = {name: spec_of(model) for name, (model, _) in OPTIONS.items()}
DATA_SPECS = {name: spec_of(data) for name, (_, data) in OPTIONS.items()}


def with_defaults(workload: str, model: dict[str, Any], data: dict[str, Any]) -> tuple[dict, dict]:
    """A built-in workload's options with the defaults filled in for keys not given."""
    model_cls, data_cls = OPTIONS[workload]
    return {**defaults_of(model_cls), **model}, {**defaults_of(data_cls), **data}


def python_corpus(chars: int) -> str:
    """charlm's text: the documentation topics that ship with Python (pydoc_data), its first chars."""
    from pydoc_data.topics import topics
    text = "\n\n".join(topics[k] for k in sorted(topics))
    return text[:chars]


def charlm_split(n_chars: int, seq_len: int) -> tuple[int, int]:
    """(training characters, held-out characters) of a corpus of n_chars."""
    n_val = max(seq_len + 1, n_chars // 10)
    return max(0, n_chars - n_val), min(n_chars, n_val)


def train_samples(workload: str, model: dict[str, Any], data: dict[str, Any]) -> int | None:
    """Training samples a built-in workload has with these options (None for a custom workload)."""
    if workload not in OPTIONS:
        return None
    model, data = with_defaults(workload, model, data)
    if workload == "digits":
        return DIGITS_SAMPLES - int(round(DIGITS_SAMPLES * data["test_fraction"]))
    if workload == "cifar-resnet":
        return data["samples"]
    seq = data["seq_len"]
    n_train, _ = charlm_split(len(python_corpus(data["corpus_chars"])), seq)
    return len(range(0, n_train - seq - 1, seq))


def model_parameters(workload: str, model: dict[str, Any], data: dict[str, Any]) -> int | None:
    """Trainable parameters of a built-in workload's model with these options, counted from its
    architecture without building it (None for a custom workload). tests/unit/test_workloads.py holds
    it to the models PyTorch builds."""
    if workload not in OPTIONS:
        return None
    model, data = with_defaults(workload, model, data)
    if workload == "digits":
        h = model["hidden"]
        return 64 * h + h + h * 10 + 10
    if workload == "charlm":
        vocab = len(set(python_corpus(data["corpus_chars"])))
        e, h, layers = model["embed"], model["hidden"], model["layers"]
        lstm = sum(4 * h * ((e if i == 0 else h) + h) + 8 * h for i in range(layers))
        return vocab * e + lstm + h * vocab + vocab
    w, blocks = model["width"], model["blocks"]
    n = 3 * w * 9 + 2 * w                       # stem: 3x3 convolution and its GroupNorm
    c = w
    for stage, stride in enumerate((1, 2, 2)):
        c_out = w * 2 ** stage
        for b in range(blocks):
            n += c * c_out * 9 + c_out * c_out * 9 + 4 * c_out          # two 3x3 convolutions, two norms
            if (stride if b == 0 else 1) != 1 or c != c_out:
                n += c * c_out + 2 * c_out                               # 1x1 projection and its norm
            c = c_out
    return n + c * 10 + 10
