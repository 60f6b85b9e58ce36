"""Options each built-in workload accepts in a job's [model] and [data] tables (plain data, no torch)."""

MODEL_SPECS = {
    "digits": {"hidden": (int, 128)},
    "cifar-resnet": {"width": (int, 16), "blocks": (int, 1)},
    "charlm": {"embed": (int, 32), "hidden": (int, 128), "layers": (int, 1)},
}
DATA_SPECS = {
    "digits": {"test_fraction": (float, 0.2)},
    "cifar-resnet": {"samples": (int, 4096), "test_samples": (int, 512)},
    "charlm": {"seq_len": (int, 64), "corpus_chars": (int, 200_000), "sample_chars": (int, 200)},
}
