"""Package-level promises: generated code is fresh, `import runwire` stays light."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_protobuf_code_is_fresh(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT_DIR=str(tmp_path))
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_proto.sh")], check=True, env=env)
    for name in ("telemetry_pb2.py", "telemetry_pb2.pyi", "telemetry_pb2_grpc.py"):
        fresh = (tmp_path / name).read_text()
        committed = (ROOT / "proto" / name).read_text()
        assert fresh == committed, f"proto/{name} is stale: run `make proto`"


def test_import_runwire_pulls_no_server_dependencies():
    code = ("import sys, runwire; heavy = {'kafka', 'fastavro', 'clickhouse_connect', 'chdb', 'numpy', 'pyarrow', "
            "'pynvml', 'pandas'}; print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_console_script_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "runwire.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "up", "gateway", "ingest", "migrate", "sync"):
        assert command in out.stdout
