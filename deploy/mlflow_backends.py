"""The training side's artifact store and model registry, handed to runwire's MLflow API server
(runwire.ingest may not import them: this is where they meet).

    server = create_server(MlflowServerConfig.from_settings(...)).start()
"""

from __future__ import annotations

import hashlib
import json

from runwire import artifacts, registry, stores
from runwire.ingest.mlflow import server as mlflow_server


class ArtifactBackend:
    """runwire's content-addressed store and artifact records, as the mlflow-artifacts proxy
    (runwire.ingest.mlflow.artifacts) uses them."""

    tag_prefix = artifacts.ARTIFACT_PREFIX

    def __init__(self, store) -> None:
        self.store = store

    def upload_file(self, name: str, path: str, kind: str) -> dict[str, str]:
        """Store one file (skipped when its blob exists) and its manifest; the record's tag."""
        artifacts.check_name(name)  # ValueError: the proxy answers INVALID_PARAMETER_VALUE
        return artifacts.record_tags(name, kind, artifacts.upload_tree(self.store, path, threads=1))

    def manifest(self, record: dict) -> list[dict]:
        return json.loads(self.store.get_bytes(stores.check_digest(record["digest"])))["files"]

    def download(self, record: dict, sha256: str, dest: str) -> None:
        self.store.get_file(stores.check_digest(sha256), dest)  # verified against the digest

    def put_manifest(self, files: list[dict]) -> dict:
        """A manifest over blobs already stored (a model version's files): its digest and store."""
        data = artifacts.manifest_bytes(files)
        digest = hashlib.sha256(data).hexdigest()
        if not self.store.has(digest):
            self.store.put_bytes(digest, data)
        return {"digest": digest, "store": self.store.url}

    def close(self) -> None:
        if hasattr(self.store, "close"):
            self.store.close()


def create_server(config: mlflow_server.MlflowServerConfig, sink=None) -> mlflow_server.MlflowServer:
    """runwire's MLflow API server with the mlflow-artifacts proxy over the artifact store
    (config.artifact_store, RUNWIRE_ARTIFACT_STORE) and the registry endpoints over the model
    registry (config.registry, RUNWIRE_REGISTRY)."""
    store = stores.open_store(config.artifact_store or None, config.artifact_s3_endpoint_url or None)
    return mlflow_server.create_server(config, sink, artifact_backend=ArtifactBackend(store),
                                       registry=registry.open_registry(config.registry or None))
