"""Renderers of results for people and machines: the terminal (rich), JSON, JUnit XML and
self-contained HTML. They read result models; they never run a check."""
