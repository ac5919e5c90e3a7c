"""The surfaces: what people and programs touch.

The HTTP API, the ML services, the ``aurum-ml`` command and its embedded worker, the
Prometheus exporter, and the uvicorn setup every server shares. A surface may import any
door; nothing but a surface imports a surface.
"""
