"""uvicorn's server with fastprm's drain: on SIGTERM / SIGINT the service is marked draining (``/health``
answers 503, a new request on an open connection gets 503) while uvicorn stops accepting connections and
waits for every request already received, which the model thread finishes."""

from __future__ import annotations

from collections.abc import Callable

import uvicorn

from .app import ScoringService


class DrainingServer(uvicorn.Server):
    """Args: service: what to mark draining; config: uvicorn's; on_ready: called with (host, port) once
    listening (``port=0``: the port the system picked)."""

    def __init__(self, service: ScoringService, config: uvicorn.Config, on_ready: Callable[[str, int], None]):
        super().__init__(config)
        self.service = service
        self.on_ready = on_ready

    def handle_exit(self, sig, frame) -> None:
        self.service.draining = True
        super().handle_exit(sig, frame)
        # uvicorn raises the signal again once shut down, so the process would die of it (-15); a finished
        # drain is a clean exit, 0. A second Ctrl-C still forces the exit (uvicorn reads should_exit).
        self._captured_signals.clear()

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.on_ready(host, port)
