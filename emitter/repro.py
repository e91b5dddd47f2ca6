"""What a Run does for reproducibility: metadata capture at init, datasets, artifacts. Kept out
of run.py so the run object only delegates to it."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from runwire import artifacts, datasets, metadata

log = logging.getLogger("runwire")


def split_settings(settings: dict) -> tuple[dict, dict, dict]:
    """init(**settings) -> (capture settings, artifact settings, the emitter's)."""
    capture, rest = metadata.split_settings(settings)
    artifact, rest = artifacts.split_settings(rest)
    return capture, artifact, rest


class Repro:
    def __init__(self, run, capture_settings: dict, artifact_settings: dict, spool_root: str) -> None:
        self.run = run
        self.capture_config = metadata.build_config(capture_settings)
        self.artifact_config = artifacts.build_config(artifact_settings)
        exporter = run._exporter
        ident = {f: getattr(exporter.identity, f) for f in ("project", "run_id", "rank", "local_rank", "node_rank",
                                                            "world_size", "host", "pid")}
        self.uploader = artifacts.Uploader(self.artifact_config,
                                           artifacts.pending_dir(spool_root, run.project, run.id), ident,
                                           emit=run.set_tags, flush=run.flush)
        self.datasets: dict[str, dict] = {}
        self.refs: dict[str, artifacts.ArtifactRef] = {}
        self.capture: metadata.CaptureThread | None = None
        layout = run.layout
        if self.capture_config.capture and (layout.rank == 0 or layout.local_rank == 0):
            self.capture = metadata.CaptureThread(self.capture_config, layout.rank == 0, layout.host, self._captured,
                                                  nvml=_nvml())
            self.capture.start()

    def _captured(self, result: metadata.Captured) -> None:
        self.run.set_tags(result.tags)
        for name, data in result.files.items():
            self.uploader.submit_bytes(f"runwire/{name}", data, kind="runwire.metadata")

    def captured_tags(self, timeout: float = 10.0) -> dict[str, str]:
        if self.capture is None:
            return {}
        self.capture.join(timeout)
        return dict(self.capture.result.tags) if self.capture.result else {}

    def log_artifact(self, path, name=None, type="", metadata_: dict | None = None) -> artifacts.ArtifactRef:
        ref = self.uploader.submit(path, name=name, kind=type or "", metadata=metadata_)
        self.refs[ref.name] = ref
        return ref

    def log_dataset(self, name: str, source: Any, digest: str | None = None, context: str = "", schema=None,
                    profile=None, size_bytes: int | None = None) -> dict:
        tags = datasets.dataset_tags(name, os.fspath(source) if hasattr(source, "__fspath__") else str(source),
                                     digest, context, schema, profile, size_bytes)
        self.run.set_tags(tags)
        record = json.loads(next(iter(tags.values())))
        self.datasets[name] = record
        return record

    def register_model(self, model: str, artifact: str = "model", description: str = "", reason: str = "",
                       actor: str | None = None, registry_path: str | None = None, timeout: float = 600.0) -> dict:
        """A new registry version from this run's artifact, once uploaded, with its lineage."""
        from runwire import registry

        ref = self.refs.get(artifact)
        if ref is None:
            raise ValueError(f"this run logged no artifact {artifact!r} (log_model(path, name={artifact!r}) first)")
        record = ref.wait(timeout)
        self.uploader.wait(timeout)  # the captured diff and package list, for the lineage
        tags = self.captured_tags()
        tags.update({artifacts.ARTIFACT_PREFIX + n: json.dumps(r) for n, r in self.uploader.records.items()})
        lineage = registry.lineage_from_tags(tags, self.datasets)
        lineage.update(run_id=self.run.id, project=self.run.project, artifact=artifact, digest=record["digest"])
        return registry.open_registry(registry_path).create_version(
            model, record["digest"], run_id=self.run.id, project=self.run.project, artifact=artifact,
            store=record["store"], lineage=lineage, description=description, actor=actor, reason=reason)

    def shutdown(self, timeout: float | None = None) -> None:
        """Before the run's end: the captured metadata, then the uploads, within `timeout`
        (finish(timeout=...); default artifact_finish_timeout_s). What is left stays journaled
        for `runwire sync`."""
        deadline = time.monotonic() + (self.artifact_config.artifact_finish_timeout_s if timeout is None else timeout)
        if self.capture is not None:
            self.capture.join(max(0.0, min(self.capture_config.capture_timeout_s, deadline - time.monotonic())))
        self.uploader.shutdown(max(0.0, deadline - time.monotonic()))

    def closed(self, delivered: bool) -> None:
        """After the exporter closed: `delivered` when the gateway acknowledged everything."""
        if delivered:
            self.uploader.acknowledged()


def _nvml():
    from runwire.run import _nvml_override

    return _nvml_override()
