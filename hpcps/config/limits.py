"""Limits on the numbers users give, in one place (docs/reliability.md lists them).

Each bound is far beyond any real use, so a value past it is a typo or a unit mistake; several also
keep the arithmetic sound: past them the simulator's sums overflow to inf and NaN (and its event loop
never ends), PyTorch cannot hold the value in float32, or NumPy refuses a seed. Non-finite numbers
(nan, inf) are refused everywhere by the TOML reader itself.
"""

# Schedules
MAX_RANKS = 1_000_000               # rank numbers are below this
MAX_BATCH = 10_000_000              # samples per step: one worker's, and the job's global batch
MAX_THREADS = 512                   # PyTorch threads of one worker, with or without a cluster
THREADS_PER_CORE = 4                # with a cluster: at most this many threads per core of the node

# Jobs
MAX_ITERATIONS = 1_000_000_000
MAX_EPOCHS = 1_000_000.0
MAX_SEED = 2**32 - 1                # NumPy and PyTorch seeds are unsigned 32-bit here
MAX_LOG_EVERY = 1_000_000_000
MAX_CHECKPOINT_EVERY_S = 1e9        # about 30 years
MAX_LR = 1e4                        # float32 holds lr * gradient only far below 3.4e38
MAX_WEIGHT_DECAY = 1e4
MAX_STALENESS = 1_000               # ssp rounds; a server keeps min(s + 1, iterations) push rows per worker
MAX_EPS = 1.0

# Workload options
MAX_WIDTH = 65_536                  # hidden units, embedding sizes, channel widths
MAX_LAYERS = 256                    # layers and residual blocks
MAX_SAMPLES = 1_000_000             # generated data sets (cifar-resnet: 12 kB each, on every rank)
MAX_SEQ_LEN = 65_536
MAX_CHARS = 1_000_000_000
MAX_MODEL_PARAMS = 10**9            # a built-in model: 4 GB a copy, and every rank holds several

# Clusters (per node type)
MIN_SPEED, MAX_SPEED = 1e-4, 1e4    # relative to the calibration machine (times divide by it)
MAX_CORES = 4096
MIN_NIC_GBPS, MAX_NIC_GBPS = 1e-3, 1e5   # 1 Mb/s to 100 Tb/s per direction
MAX_LATENCY_US = 1e7                # 10 s one way
MAX_FIXED_MS = 1e6                  # 1000 s per step
MAX_MEMORY_GB = 1e6                 # 1 PB per node
MAX_GPUS = 1024

# Compute profiles (hpcps/sim/profiles.toml and HPCPS_PROFILES)
MIN_MEMCPY_BYTES_PER_S, MAX_MEMCPY_BYTES_PER_S = 1e6, 1e15
MAX_SECONDS_PER_BYTE = 1e-3         # server aggregation and update costs
MAX_STEP_S = 1e4                    # a calibrated step, or its per-sample part
MAX_PARAMS = 10**12
MAX_BYTES = 1e15                    # activation bytes per sample, a rank's own footprint

# Command-line numbers
MAX_SIM_ITERATIONS = 10_000         # hpcps.sim --iterations: memory grows with iterations x ranks
MAX_NOISE_SIGMA = 5.0               # hpcps.sim --noise: lognormal sigma
MAX_STRAGGLER_SLOWDOWN = 1e3
MAX_TIME_DILATION = 1e4             # hpcps.train --time-dilation: real seconds per emulated second
MAX_FLUSH_S = 1e6                   # hpcps.train --trace-flush-s
MAX_TIMEOUT_S = 1e7                 # hpcps.tune and hpcps.testbed --timeout: about 4 months (a wait past
                                    # 2**63 ns overflows the timers that enforce it)
