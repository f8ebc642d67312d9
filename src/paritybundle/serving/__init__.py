"""The serving side's HTTP layer: an Open Inference Protocol (V2) server and client.

``wire`` (the V2 request and response models), ``decoding`` (request data into arrays),
``handlers`` (the routes), ``state`` (one process's options, metrics and start-up check),
``app.create_app`` (the ASGI app), ``batching`` (micro-batches), ``server.serve``
(uvicorn), and ``client.V2Client``, which ``bundle check --url`` passes to the check.
"""
