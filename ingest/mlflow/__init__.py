"""MLflow's tracking REST API served by runwire: `runwire mlflow-server`.

protocol.py  pure: MLflow request fields -> runwire Envelopes, rows -> MLflow JSON, errors
service.py   the endpoints: writes through the gateway's sink, reads through RunQueries
server.py    the ASGI app (Starlette + uvicorn) and its configuration
artifacts.py the mlflow-artifacts proxy over runwire's artifact store
registry.py  the model registry endpoints over runwire's registry
(`runwire mlflow-server` is runwire.deploy.mlflow_commands: it opens the store and the registry,
which ingest does not import, in runwire.deploy.mlflow_backends)
"""
