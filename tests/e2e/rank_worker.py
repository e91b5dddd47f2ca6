"""One simulated rank for the end-to-end tests: logs N points of 2 metrics, then finishes.

Run as a separate process (`python tests/e2e/rank_worker.py N`) with RUNWIRE_GATEWAY,
RUNWIRE_RUN_ID, RANK and WORLD_SIZE set, like a rank under torchrun. Prints its summary as JSON.
"""

import json
import sys

import runwire


def main() -> None:
    points = int(sys.argv[1])
    run = runwire.init(project="e2e", config={"lr": 0.001}, gpu=False)
    rank = run.layout.rank
    for step in range(points // 2):
        run.log({"loss": rank + 1.0 / (step + 1), "grad_norm": float(step)}, step=step)
    summary = run.finish()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
