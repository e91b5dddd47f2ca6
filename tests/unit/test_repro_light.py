"""The emitter stays light with reproducibility on: capture, datasets and a local-store artifact
import no S3 client, no SQLite and no server package; the registry imports only when asked for."""

from __future__ import annotations

import json
import subprocess
import sys

_SCRIPT = """
import json, sys, time
import runwire
run = runwire.init(project="light", gateway="127.0.0.1:1", gpu=False, finish_timeout_s=0.5, spool_dir=sys.argv[1],
                   artifact_store=sys.argv[2], capture=True)
run.log_dataset("d", sys.argv[3])
ref = run.log_artifact(sys.argv[3], name="data")
record = ref.wait(30)
run._repro.capture.join(30)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in
               {"boto3", "botocore", "sqlite3", "_sqlite3", "clickhouse_connect", "chdb", "numpy", "kafka"})
run.finish()
print(json.dumps({"heavy": heavy, "record": record}))
"""


def test_reproducibility_keeps_the_emitter_light(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("hello")
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "spool"), str(tmp_path / "store"), str(data)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["record"]["files"] == 1 and result["record"]["size"] == 5
    assert result["record"]["store"] == str(tmp_path / "store")
