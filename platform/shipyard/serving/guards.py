"""What keeps one bad request or one dead parent from hurting anyone else.

- ``BodyLimit``: an ASGI middleware answering 413 to a body over the limit, declared or streamed,
  before the app parses it (a 10 MB chat body would otherwise hold the event loop for seconds).
- ``LastResort``: an ASGI middleware that turns an exception escaping any route into a 500 with a JSON
  body, so uvicorn keeps the keep-alive connection instead of closing it after the error.
- ``port_free``: a port some other process holds is refused at start, with a clear error, instead of
  serving next to (or through) a stale server.
- ``exit_with_parent``: a child server (the RAG sidecar) ends when the process that started it does,
  even one killed by a signal whose ``finally`` never ran.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

log = logging.getLogger("shipyard.serving")


class _TooLarge(Exception):
    pass


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def _error_body(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = _error_body(f"request body over {self.max_bytes} bytes (--max-body-kb)", "invalid_request_error")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await _send_json(send, 413, too_large)
        seen, started, answered = 0, False, False

        async def limited():  # a body without a length, streamed past the limit: 413 now, the app's reply dropped
            nonlocal seen, answered
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if not started and not answered:
                        answered = True
                        await _send_json(send, 413, too_large)
                    raise _TooLarge
            return message

        async def tracked(message):
            nonlocal started
            if answered:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except _TooLarge:
            pass


class LastResort:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if not started:
                await _send_json(send, 500, _error_body(f"internal error: {type(exc).__name__}", "server_error"))


def port_free(host: str, port: int, what: str) -> None:
    """Raise OSError naming ``what`` when another process holds ``host:port``."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed socket in TIME_WAIT is not a holder
        try:
            s.bind((host, port))
        except OSError as exc:
            raise OSError(f"{what}: {host}:{port} is already in use by another process (a server left running?); "
                          f"stop it or choose another port") from exc


def die_with_parent() -> None:
    """``preexec_fn`` for a child server: on Linux the kernel sends it SIGTERM when its parent dies."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: exit_with_parent's watch covers it
        pass


def exit_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """In a child server: a daemon thread that ends the process once ``parent_pid`` is gone."""
    import signal

    def watch():
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent_pid:
                log.warning("parent %d is gone; stopping", parent_pid)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
