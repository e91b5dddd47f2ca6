"""One rank that logs until told to stop, for the Kafka cluster fault tests.

Run as a process (`python tests/integration/cluster_rank.py`) with RUNWIRE_GATEWAY, RUNWIRE_RUN_ID,
RANK and WORLD_SIZE set, like a rank under torchrun. Logs a step of 10 metrics every few
milliseconds until its stdin closes, then finishes and prints the points it logged and its
summary as JSON.
"""

import json
import sys
import threading

import runwire

METRICS = 10


def main() -> None:
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    run = runwire.init(project="cluster", gpu=False)
    step = 0
    while not stop.wait(0.005):  # a training step's worth of time between logs
        run.log({f"m{j}": step * 0.5 + j for j in range(METRICS)}, step=step)
        step += 1
    summary = run.finish()
    print(json.dumps({"points": step * METRICS, "summary": summary}), flush=True)


if __name__ == "__main__":
    main()
