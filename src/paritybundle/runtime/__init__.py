"""The serving runtime: ONNX Runtime sessions and their settings, input validation, the
environment lock and its drift, and loading a verified bundle (:func:`.load.load`)."""
