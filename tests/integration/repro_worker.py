"""A training process for the reproducibility tests (run as a subprocess: its argv, cwd and
exit are what the tests look at).

    repro_worker.py train DATA_DIR MODEL_DIR [args...]   log a dataset and a model, finish
    repro_worker.py big FILE                              log FILE, then keep training until killed
"""

import json
import sys
import time

import runwire

mode = sys.argv[1]
run = runwire.init(project="repro", config={"lr": 0.1})
if mode == "train":
    dataset = run.log_dataset("corpus", sys.argv[2], context="training")
    ref = run.log_model(sys.argv[3], name="model")
    for step in range(100):
        run.log({"loss": 1.0 / (step + 1)}, step=step)
    record = ref.wait(120)
    run.finish()
    print(json.dumps({"dataset": dataset, "model": record}))
else:
    run.log_artifact(sys.argv[2], name="ckpt", type="checkpoint")
    print("logged", flush=True)
    step = 0
    while True:
        run.log({"loss": 1.0}, step=step)
        step += 1
        time.sleep(0.01)
