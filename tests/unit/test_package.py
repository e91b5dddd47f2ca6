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
    out = subprocess.run([sys.executable, "-m", "runwire.deploy.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "up", "gateway", "ingest", "migrate", "sync"):
        assert command in out.stdout


def test_every_emitter_module_is_under_the_layering_contracts():
    """The emitter's modules are listed one by one in two import-linter contracts (its package is
    the namespace root): a new module must be added there, or the layering is not checked for it."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = pyproject["tool"]["importlinter"]["contracts"]
    training = next(c for c in contracts if c["name"].startswith("The training side"))
    servers = next(c for c in contracts if "do not reach into the training side" in c["name"])
    emitter = ROOT / "emitter"
    modules = {f"runwire.{p.stem}" for p in emitter.glob("*.py") if p.stem != "__init__"}
    modules |= {f"runwire.{p.name}" for p in emitter.iterdir()
                if p.is_dir() and (p / "__init__.py").exists() and p.name != "testing"}
    assert modules | {"runwire"} <= set(training["source_modules"]), sorted(modules - set(training["source_modules"]))
    assert modules <= set(servers["forbidden_modules"]), sorted(modules - set(servers["forbidden_modules"]))


def test_layering_contracts_hold_and_catch_a_wrong_import(tmp_path):
    """Plain lint-imports passes on the installed tree, and fails on a copy with storage importing
    ingest."""
    import shutil

    lint = Path(sys.executable).with_name("lint-imports")
    ok = subprocess.run([str(lint)], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-2000:]

    copy = tmp_path / "repo"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "build", "node_modules", "__pycache__"))
    with open(copy / "storage" / "rows.py", "a") as f:
        f.write("\nfrom runwire.ingest import codec as _codec  # a deliberate layering violation\n")
    bad = subprocess.run([sys.executable, str(copy / "scripts" / "lint_imports.py")], capture_output=True,
                         text=True, timeout=240)
    assert bad.returncode != 0
    assert "runwire.storage.rows -> runwire.ingest.codec" in bad.stdout
