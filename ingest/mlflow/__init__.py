"""MLflow's tracking REST API served by runwire: `runwire mlflow-server`.

protocol.py  pure: MLflow request fields -> runwire Envelopes, rows -> MLflow JSON, errors
service.py   the endpoints: writes through the gateway's sink, reads through RunQueries
server.py    the ASGI app (Starlette + uvicorn) and its configuration
commands.py  `runwire mlflow-server` (light: registered by runwire.ingest.commands)
"""
