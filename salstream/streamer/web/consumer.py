"""``salstream run --web``: the browser viewer of a run, subscribed to the run's own publisher."""
from __future__ import annotations

import logging
import re

from salstream.errors import SalstreamError

log = logging.getLogger("salstream.web")

_ANY_HOST = re.compile(r"^tcp://(0\.0\.0\.0|\*|\[::\]|::):")


def local_address(endpoint: str) -> str:
    """The address a subscriber on this host uses for a publisher bound to ``endpoint``
    (a wildcard bind such as ``tcp://0.0.0.0:5556`` is reached through loopback)."""
    match = _ANY_HOST.match(endpoint)
    if not match:
        return endpoint
    loopback = "[::1]" if ":" in match.group(1) else "127.0.0.1"
    return f"tcp://{loopback}:{endpoint[match.end():]}"


class WebViewing:
    """Pipeline consumer that serves the viewer while the run lasts.

    The page's socket is bound at construction, so a busy port fails before the model loads;
    the viewer subscribes to the run's publisher once it is bound.
    """

    def __init__(self, listen: str, *, allow_remote: bool = False, alpha: float = 0.6):
        from salstream.streamer.web.server import WebViewer
        self.viewer = WebViewer(listen, allow_remote=allow_remote, alpha=alpha)

    def start(self, sources=(), publisher=None) -> None:
        if publisher is None or publisher.endpoint is None:
            self.viewer.close()
            raise SalstreamError("--web shows what the run publishes: give the run a --publish address")
        self.viewer.connect(local_address(publisher.endpoint)).start()
        log.info("web viewer: open %s", self.viewer.url)

    def on_unit(self, unit) -> None:
        pass

    def on_map(self, header, saliency) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        self.viewer.close()

    def summary(self) -> list[str]:
        return [f"web viewer: {self.viewer.url} ({self.viewer.clients} client(s) served)"]
