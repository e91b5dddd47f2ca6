"""Model registry: registered models, numbered versions made from a run's model artifact,
aliases (`champion`, `candidate`, any name), MLflow's stages (None -> Staging -> Production ->
Archived) and an audit history of every change (who, when, why).

    from runwire import registry
    reg = registry.open_registry()                 # RUNWIRE_REGISTRY, default ~/.local/share/runwire/registry.db
    v = reg.create_version("ranker", digest=..., run_id=..., lineage={...})
    reg.set_alias("ranker", "champion", v["version"], reason="beat v3 on eval")
    reg.transition("ranker", v["version"], "Production", archive_existing=True)
    reg.versions_in_stage_at("ranker", "Production", when)   # what was in production on date D

Storage: one SQLite file (the standard library's; WAL journal). Registry writes are rare and must
be exact, which is what SQLite's transactions give and ClickHouse (no transactions, eventual
replacing merges) does not: every write runs in `BEGIN IMMEDIATE`, which takes the database's
single write lock before reading, so two processes registering at once are serialized: the
second reads the first's committed counter. Version numbers come from a per-model counter
(`models.last_version`), so they are unique and strictly increasing and never reused; the
primary key (model, version) would refuse a duplicate anyway. Readers are never blocked (WAL).
The file must be on a local disk (SQLite's locks are unreliable on network file systems): the
machine that runs `runwire up`, or one registry host for a cluster.
"""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

STAGES = ("None", "Staging", "Production", "Archived")
_BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name          TEXT PRIMARY KEY,
    description   TEXT NOT NULL DEFAULT '',
    last_version  INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    created_by    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    model        TEXT NOT NULL REFERENCES models(name),
    version      INTEGER NOT NULL,
    stage        TEXT NOT NULL DEFAULT 'None',
    digest       TEXT NOT NULL,
    run_id       TEXT NOT NULL DEFAULT '',
    project      TEXT NOT NULL DEFAULT '',
    artifact     TEXT NOT NULL DEFAULT '',
    store        TEXT NOT NULL DEFAULT '',
    lineage      TEXT NOT NULL DEFAULT '{}',
    description  TEXT NOT NULL DEFAULT '',
    created_at   REAL NOT NULL,
    created_by   TEXT NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS aliases (
    model    TEXT NOT NULL,
    alias    TEXT NOT NULL,
    version  INTEGER NOT NULL,
    PRIMARY KEY (model, alias)
);
CREATE TABLE IF NOT EXISTS history (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    model    TEXT NOT NULL,
    version  INTEGER,
    action   TEXT NOT NULL,          -- create_model, create_version, stage, alias, delete_alias, tag,
                                     -- delete_tag, description
    field    TEXT NOT NULL DEFAULT '',  -- the alias name for alias actions
    old      TEXT,
    new      TEXT,
    actor    TEXT NOT NULL,
    reason   TEXT NOT NULL DEFAULT '',
    at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS history_model ON history (model, at);
CREATE TABLE IF NOT EXISTS tags (
    model    TEXT NOT NULL,
    version  INTEGER NOT NULL DEFAULT 0,  -- 0: a tag of the model itself
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (model, version, key)
);
"""


class RegistryError(ValueError):
    """A bad request: unknown model or version, bad stage or alias."""


def default_path() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.environ.get("RUNWIRE_REGISTRY") or os.path.join(base, "runwire", "registry.db")


def open_registry(path: str | os.PathLike | None = None) -> "Registry":
    return Registry(path or default_path())


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return str(os.getuid())


def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 256 or not value.isprintable():
        raise RegistryError(f"{what} {value!r} must be 1-256 printable characters")
    return value


class Registry:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._read() as db:
            db.executescript(_SCHEMA)  # IF NOT EXISTS: idempotent; executescript runs its own transaction

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
        return db

    @contextmanager
    def _write(self):
        """One write transaction holding the database's write lock from its first statement."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    @contextmanager
    def _read(self):
        db = self._connect()
        try:
            yield db
        finally:
            db.close()

    # -- writes -----------------------------------------------------------------------------
    def create_model(self, name: str, description: str = "", actor: str | None = None, reason: str = "") -> dict:
        """Register a model name (no-op when it exists)."""
        with self._write() as db:
            self._ensure_model(db, _check_name(name, "model name"), description, _actor(actor), reason)
        return self.get_model(name)

    def _ensure_model(self, db, name: str, description: str, actor: str, reason: str) -> None:
        if db.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone() is None:
            now = time.time()
            db.execute("INSERT INTO models (name, description, created_at, created_by) VALUES (?, ?, ?, ?)",
                       (name, description, now, actor))
            self._log(db, name, None, "create_model", "", None, None, actor, reason, now)

    def create_version(self, model: str, digest: str, run_id: str = "", project: str = "", artifact: str = "",
                       store: str = "", lineage: dict | None = None, description: str = "",
                       actor: str | None = None, reason: str = "") -> dict:
        """A new version of `model` (created if new) with the next number: unique and strictly
        increasing even when several processes register at once."""
        _check_name(model, "model name")
        if not isinstance(digest, str) or len(digest) != 64:
            raise RegistryError(f"digest must be a SHA-256 hex digest, got {digest!r}")
        who = _actor(actor)
        with self._write() as db:
            self._ensure_model(db, model, "", who, reason)
            version = db.execute("SELECT last_version + 1 FROM models WHERE name = ?", (model,)).fetchone()[0]
            db.execute("UPDATE models SET last_version = ? WHERE name = ?", (version, model))
            now = time.time()
            db.execute("INSERT INTO versions (model, version, digest, run_id, project, artifact, store, lineage, "
                       "description, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (model, version, digest, run_id, project, artifact, store,
                        json.dumps(lineage or {}, sort_keys=True), description, now, who))
            self._log(db, model, version, "create_version", "", None, digest, who, reason, now)
            self._log(db, model, version, "stage", "", None, "None", who, reason, now)
        return self.get_version(model, version)

    def transition(self, model: str, version: int, stage: str, archive_existing: bool = False,
                   actor: str | None = None, reason: str = "") -> dict:
        """Move a version to a stage. archive_existing: versions already in that stage (Staging or
        Production) move to Archived, in the same transaction."""
        stage = self._check_stage(stage)
        who = _actor(actor)
        with self._write() as db:
            old = self._stage_of(db, model, version)
            now = time.time()
            if archive_existing and stage in ("Staging", "Production"):
                for (other,) in db.execute("SELECT version FROM versions WHERE model = ? AND stage = ? AND version != ?",
                                           (model, stage, version)).fetchall():
                    db.execute("UPDATE versions SET stage = 'Archived' WHERE model = ? AND version = ?", (model, other))
                    self._log(db, model, other, "stage", "", stage, "Archived", who,
                              f"archived: version {version} moved to {stage}" + (f" ({reason})" if reason else ""), now)
            if old != stage:
                db.execute("UPDATE versions SET stage = ? WHERE model = ? AND version = ?", (stage, model, version))
                self._log(db, model, version, "stage", "", old, stage, who, reason, now)
        return self.get_version(model, version)

    def set_alias(self, model: str, alias: str, version: int, actor: str | None = None, reason: str = "") -> dict:
        """Point `alias` at `version`, atomically (a reader sees the old or the new version)."""
        _check_name(alias, "alias")
        if alias.isdigit():
            raise RegistryError(f"alias {alias!r} would be confused with a version number")
        who = _actor(actor)
        with self._write() as db:
            self._stage_of(db, model, version)  # the version exists
            row = db.execute("SELECT version FROM aliases WHERE model = ? AND alias = ?", (model, alias)).fetchone()
            old = row[0] if row else None
            if old != version:
                db.execute("INSERT INTO aliases (model, alias, version) VALUES (?, ?, ?) "
                           "ON CONFLICT (model, alias) DO UPDATE SET version = excluded.version", (model, alias, version))
                self._log(db, model, version, "alias", alias, None if old is None else str(old), str(version), who,
                          reason, time.time())
        return self.get_version(model, version)

    def delete_alias(self, model: str, alias: str, actor: str | None = None, reason: str = "") -> None:
        who = _actor(actor)
        with self._write() as db:
            row = db.execute("SELECT version FROM aliases WHERE model = ? AND alias = ?", (model, alias)).fetchone()
            if row is None:
                raise RegistryError(f"model {model!r} has no alias {alias!r}")
            db.execute("DELETE FROM aliases WHERE model = ? AND alias = ?", (model, alias))
            self._log(db, model, row[0], "delete_alias", alias, str(row[0]), None, who, reason, time.time())

    def set_tag(self, model: str, key: str, value: str, version: int | None = None, actor: str | None = None,
                reason: str = "") -> None:
        """Set a tag of the model, or of one version."""
        _check_name(key, "tag key")
        who = _actor(actor)
        with self._write() as db:
            number = self._tag_target(db, model, version)
            row = db.execute("SELECT value FROM tags WHERE model = ? AND version = ? AND key = ?",
                             (model, number, key)).fetchone()
            db.execute("INSERT INTO tags (model, version, key, value) VALUES (?, ?, ?, ?) ON CONFLICT "
                       "(model, version, key) DO UPDATE SET value = excluded.value", (model, number, key, str(value)))
            self._log(db, model, version, "tag", key, row[0] if row else None, str(value), who, reason, time.time())

    def delete_tag(self, model: str, key: str, version: int | None = None, actor: str | None = None,
                   reason: str = "") -> None:
        who = _actor(actor)
        with self._write() as db:
            number = self._tag_target(db, model, version)
            row = db.execute("SELECT value FROM tags WHERE model = ? AND version = ? AND key = ?",
                             (model, number, key)).fetchone()
            if row is None:
                raise RegistryError(f"model {model!r} has no tag {key!r}" + (f" on version {version}" if version else ""))
            db.execute("DELETE FROM tags WHERE model = ? AND version = ? AND key = ?", (model, number, key))
            self._log(db, model, version, "delete_tag", key, row[0], None, who, reason, time.time())

    def set_description(self, model: str, description: str, version: int | None = None, actor: str | None = None,
                        reason: str = "") -> None:
        """Replace the description of the model, or of one version."""
        who = _actor(actor)
        with self._write() as db:
            if version is None:
                row = db.execute("SELECT description FROM models WHERE name = ?", (model,)).fetchone()
                if row is None:
                    raise RegistryError(f"no registered model {model!r}")
                db.execute("UPDATE models SET description = ? WHERE name = ?", (description, model))
            else:
                self._stage_of(db, model, version)
                row = db.execute("SELECT description FROM versions WHERE model = ? AND version = ?",
                                 (model, int(version))).fetchone()
                db.execute("UPDATE versions SET description = ? WHERE model = ? AND version = ?",
                           (description, model, int(version)))
            self._log(db, model, version, "description", "", row[0], description, who, reason, time.time())

    def _tag_target(self, db, model: str, version: int | None) -> int:
        if version is None:
            if db.execute("SELECT 1 FROM models WHERE name = ?", (model,)).fetchone() is None:
                raise RegistryError(f"no registered model {model!r}")
            return 0
        self._stage_of(db, model, version)
        return int(version)

    # -- reads ------------------------------------------------------------------------------
    def list_models(self) -> list[dict]:
        with self._read() as db:
            rows = db.execute("SELECT name, description, last_version, created_at, created_by FROM models "
                              "ORDER BY name").fetchall()
            out = []
            for row in rows:
                model = dict(row)
                model["aliases"] = self._aliases(db, row["name"])
                model["stages"] = {"Staging": [], "Production": []}  # stage -> versions in it
                for version, stage in db.execute(
                        "SELECT version, stage FROM versions WHERE model = ? AND stage IN ('Staging', 'Production') "
                        "ORDER BY version", (row["name"],)).fetchall():
                    model["stages"][stage].append(version)
                out.append(model)
            return out

    def get_model(self, name: str) -> dict:
        with self._read() as db:
            row = db.execute("SELECT name, description, last_version, created_at, created_by FROM models WHERE name = ?",
                             (name,)).fetchone()
            if row is None:
                raise RegistryError(f"no registered model {name!r}")
            model = dict(row)
            model["aliases"] = self._aliases(db, name)
            model["tags"] = self._tags(db, name, 0)
            model["updated_at"] = db.execute("SELECT max(at) FROM history WHERE model = ?", (name,)).fetchone()[0]
            model["versions"] = [self._version_dict(db, r) for r in db.execute(
                "SELECT * FROM versions WHERE model = ? ORDER BY version", (name,)).fetchall()]
            return model

    def get_version(self, model: str, version: int | str) -> dict:
        """A version by number, or by alias (`champion`)."""
        with self._read() as db:
            number = self._resolve(db, model, version)
            row = db.execute("SELECT * FROM versions WHERE model = ? AND version = ?", (model, number)).fetchone()
            return self._version_dict(db, row)

    def history(self, model: str, version: int | None = None) -> list[dict]:
        """Every change to `model` (or one version), oldest first."""
        with self._read() as db:
            sql, args = "SELECT * FROM history WHERE model = ?", [model]
            if version is not None:
                sql, args = sql + " AND version = ?", args + [int(version)]
            return [dict(r) for r in db.execute(sql + " ORDER BY id", args).fetchall()]

    def versions_in_stage_at(self, model: str, stage: str, when: float) -> list[int]:
        """The versions that were in `stage` at `when` (Unix seconds), from the history."""
        stage = self._check_stage(stage)
        state: dict[int, str] = {}
        with self._read() as db:
            for version, new in db.execute("SELECT version, new FROM history WHERE model = ? AND action = 'stage' "
                                           "AND at <= ? ORDER BY id", (model, when)).fetchall():
                state[version] = new
        return sorted(v for v, s in state.items() if s == stage)

    def alias_at(self, model: str, alias: str, when: float) -> int | None:
        """The version `alias` pointed at on `when` (Unix seconds), from the history."""
        current = None
        with self._read() as db:
            for action, new in db.execute("SELECT action, new FROM history WHERE model = ? AND field = ? "
                                          "AND action IN ('alias', 'delete_alias') AND at <= ? ORDER BY id",
                                          (model, alias, when)).fetchall():
                current = int(new) if action == "alias" else None
        return current

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _check_stage(stage: str) -> str:
        for known in STAGES:
            if stage.lower() == known.lower():
                return known
        raise RegistryError(f"stage {stage!r} is not one of {', '.join(STAGES)}")

    def _stage_of(self, db, model: str, version: int) -> str:
        row = db.execute("SELECT stage FROM versions WHERE model = ? AND version = ?", (model, int(version))).fetchone()
        if row is None:
            raise RegistryError(f"model {model!r} has no version {version}")
        return row[0]

    def _resolve(self, db, model: str, version: int | str) -> int:
        if isinstance(version, int) or (isinstance(version, str) and version.isdigit()):
            self._stage_of(db, model, int(version))
            return int(version)
        row = db.execute("SELECT version FROM aliases WHERE model = ? AND alias = ?", (model, version)).fetchone()
        if row is None:
            raise RegistryError(f"model {model!r} has no version or alias {version!r}")
        return row[0]

    @staticmethod
    def _aliases(db, model: str) -> dict[str, int]:
        return {a: v for a, v in db.execute("SELECT alias, version FROM aliases WHERE model = ? ORDER BY alias",
                                            (model,)).fetchall()}

    @staticmethod
    def _tags(db, model: str, version: int) -> dict[str, str]:
        return {k: v for k, v in db.execute("SELECT key, value FROM tags WHERE model = ? AND version = ? ORDER BY key",
                                            (model, version)).fetchall()}

    @classmethod
    def _version_dict(cls, db, row) -> dict:
        out = dict(row)
        out["lineage"] = json.loads(out["lineage"])
        out["tags"] = cls._tags(db, row["model"], row["version"])
        out["updated_at"] = db.execute("SELECT max(at) FROM history WHERE model = ? AND version = ?",
                                       (row["model"], row["version"])).fetchone()[0]
        out["aliases"] = sorted(a for (a,) in db.execute("SELECT alias FROM aliases WHERE model = ? AND version = ?",
                                                         (row["model"], row["version"])).fetchall())
        return out

    @staticmethod
    def _log(db, model, version, action, field, old, new, actor, reason, at) -> None:
        db.execute("INSERT INTO history (model, version, action, field, old, new, actor, reason, at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (model, version, action, field, old, new, actor, reason, at))


def lineage_from_tags(tags: dict[str, str], datasets: dict[str, dict] | None = None) -> dict:
    """The lineage a version keeps: git commit/branch/dirty, environment, datasets (digests)."""
    keep = ("runwire.git.commit", "runwire.git.branch", "runwire.git.remote", "runwire.git.dirty",
            "runwire.python.version", "runwire.platform", "runwire.cuda.driver", "runwire.cuda.runtime",
            "runwire.packages.count")
    out = {k.removeprefix("runwire."): tags[k] for k in keep if k in tags}
    for key, value in tags.items():
        if key.startswith("runwire.artifact.runwire/"):  # the captured diff and package list
            try:
                out[key.removeprefix("runwire.artifact.runwire/") + ".digest"] = json.loads(value)["digest"]
            except (ValueError, KeyError):
                pass
    if datasets:
        out["datasets"] = {name: {"digest": d.get("digest"), "source": d.get("source"), "context": d.get("context", "")}
                           for name, d in sorted(datasets.items())}
    return out
