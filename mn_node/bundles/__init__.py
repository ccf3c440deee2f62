"""Job bundles: a folder with ``manifest.json`` (or ``.yaml``) and ``payloads/``.

:mod:`~mn_node.bundles.manifest` validates one (every problem, by JSON path),
:mod:`~mn_node.bundles.archive` packs it into a canonical, content-addressed archive and
unpacks it into a node's cache, :mod:`~mn_node.bundles.agents` holds the router and
aggregator semantics.
"""

from mn_node.bundles.archive import DEFAULT_MAX_BYTES, BundleError, pack, unpack
from mn_node.bundles.manifest import Finding, Validation, validate_bundle, validate_manifest

__all__ = ["DEFAULT_MAX_BYTES", "BundleError", "Finding", "Validation", "pack", "unpack", "validate_bundle",
           "validate_manifest"]
