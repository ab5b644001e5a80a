"""An ASGI app served by real uvicorn on 127.0.0.1, in a daemon thread: the scripted OpenAI server's
home and the app the fault soak phones."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

log = logging.getLogger(__name__)


class LoopbackServer:
    """``with LoopbackServer(app) as srv:`` serves ``app`` on ``srv.port`` (127.0.0.1 by default) until the block ends.

    The socket is bound before uvicorn starts, so the port is known and taken at once. ``ws`` is
    uvicorn's websocket implementation (``"none"`` for an HTTP-only app).
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", ws: str = "websockets-sansio", name: str = "loopback",
                 start_timeout_s: float = 20, **config: Any):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", ws=ws,
                                                    **config))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name=f"{name}-{self.port}", daemon=True)
        self.start_timeout_s = start_timeout_s

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LoopbackServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        log.debug("serving on %s", self.base_url)
        return self

    def stop(self, timeout_s: float = 10) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=timeout_s)
        self.sock.close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
