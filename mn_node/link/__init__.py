"""Encrypted, cookie-authenticated links between nodes: the handshake (``crypto``), frames
(``codec``), one connection (``conn``) and the registry of links (``manager``)."""

from mn_node.link.crypto import PROTOCOL_VERSION, Identity
from mn_node.link.manager import COOKIE_MISMATCH, LinkManager

__all__ = ["COOKIE_MISMATCH", "PROTOCOL_VERSION", "Identity", "LinkManager"]
