"""Runs inside a Slurm allocation: two trials as srun steps through TrialLauncher; writes what it saw.

    python step_trials.py OUT_DIR MARKER     # writes OUT_DIR/result.json
"""

import json
import sys
import time
from pathlib import Path

from hpcps.slurm import TrialLauncher

out, marker = Path(sys.argv[1]), sys.argv[2]
ranks = str(Path(__file__).resolve().parent / "mpi_ranks.py")
launcher = TrialLauncher(kill_grace_s=10)
result = {"mode": launcher.mode, "allocation": launcher.allocation}

ok = launcher.submit(out / "ok trial", [sys.executable, ranks, "--hold", "1.5"], ["n1", "n2"], 3, 60,
                     {"HPCPS_TEST": "it's"}, rank_nodes=["n1", "n2", "n2"])
seen_running = None
while not (state := launcher.poll(ok)).done:
    if state.status.value == "RUNNING":
        seen_running = state.slurm_id
    time.sleep(0.1)
result["ok"] = {"status": state.status.value, "exit_code": state.exit_code, "slurm_id": state.slurm_id,
                "seen_running": seen_running, "output": ok.output.read_text()}

slow = launcher.submit(out / "slow", [sys.executable, "-c", "import time; time.sleep(300)", marker], ["n3"], 2, 2)
state = launcher.wait(slow, poll_interval_s=0.2)
result["slow"] = {"status": state.status.value, "reason": state.reason, "slurm_id": state.slurm_id,
                  "elapsed_s": state.elapsed_s, "output": slow.output.read_text()}
(out / "result.json").write_text(json.dumps(result, indent=1))
