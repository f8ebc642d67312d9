"""The serving side's HTTP layer: an Open Inference Protocol (V2) server and client.

``app.create_app`` builds the ASGI app (ready only after parity holds), ``server.serve``
runs it with uvicorn, ``client.V2Client`` is what ``bundle check --url`` uses.
"""
