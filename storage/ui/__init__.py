"""`runwire ui`: a read-only web UI and JSON API (/api/v1) over the ClickHouse store.

app.py builds the ASGI application (Starlette); server.py serves it with uvicorn on a socket it
binds itself; frontend/ holds the page's sources (npm, bundled into static/ by `make install`).
"""
