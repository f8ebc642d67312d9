"""The server's shipped bounds, in a module that imports nothing: `bundle serve`'s options take their defaults
from here without loading the HTTP stack, and the server (``state``, ``limits``) uses the same numbers."""

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_REQUEST_BATCH = 1024
DEFAULT_MAX_INFLIGHT_BYTES = 64 * 1024 * 1024
# The largest answer built for one request; the same as `check --url`'s cap on what it reads.
DEFAULT_MAX_ANSWER_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_HEADER_TIMEOUT_S = 10.0
# A request body must arrive within this of its headers, however it trickles.
DEFAULT_BODY_TIMEOUT_S = 60.0
