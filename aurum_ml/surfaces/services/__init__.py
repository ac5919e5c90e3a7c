"""Our ML services: face detection (``POST /detect``, port 8001) and face embedding
(``POST /extract``, port 8002), FastAPI apps around the same in-process model code the
workers use. The HTTP contract is in ``docs/ml-services.md`` and at ``/openapi.json``.

Run with ``aurum-ml serve detection`` / ``aurum-ml serve embedding`` (uvicorn).
"""
