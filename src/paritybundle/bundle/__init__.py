"""The bundle format: layout, manifest, opening and verifying, reference arrays, archives.

This layer imports nothing above it: everything else in paritybundle reads bundles
through :func:`~paritybundle.bundle.store.open_bundle`, which hands back a
:class:`~paritybundle.bundle.store.VerifiedBundle` only after the manifest parsed and
every file matched its hash.
"""
