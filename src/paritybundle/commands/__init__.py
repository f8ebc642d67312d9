"""Commands that compose the core: ``diff``, ``testdata``, ``rehearse``, ``build-image``, ``pack``,
``sign`` and ``check --url``. Each module is one command's library function; the CLI calls it."""
