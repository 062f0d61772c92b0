"""The browser viewer: a bridge from the ZeroMQ maps to WebSocket/MJPEG clients, and its page.

Importing this package is light (the command line reads ``DEFAULT_LISTEN``); the server
and aiohttp load on first use of :class:`WebViewer`.
"""
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:8080"

__all__ = ["WebViewer", "DEFAULT_LISTEN"]


def __getattr__(name: str) -> Any:
    if name == "WebViewer":
        from salstream.streamer.web.server import WebViewer
        return WebViewer
    raise AttributeError(name)
