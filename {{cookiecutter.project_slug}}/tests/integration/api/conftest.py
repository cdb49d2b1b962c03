"""A real server for the API tests: started once per session, each test on its own database.

The server runs in a thread of the test process (one per pytest-xdist worker), listening
on 127.0.0.1 on a port the operating system picks. Its handlers call
``get_database_client()`` when a request arrives, and while a test runs the plugin points
that singleton at the test's own database, so every request lands in the database of the
test that sent it, with either isolation strategy. A test's setup and call end only once
the server has finished their requests. The server itself never touches the database:
starting it asks for none (outside a test the singleton is blocked).
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import create_app

STARTUP_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 10.0
REQUEST_TIMEOUT = 10.0


class RequestsInFlight:
    """The API application, keeping track of the HTTP requests it is still handling: a
    handler that outlives its test (its client gave up waiting) would write into the
    database of the test running then."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._running: list[str] = []
        self._changed = threading.Condition()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the lifespan, if turned on, lasts the whole session
            await self.app(scope, receive, send)
            return
        test = os.environ.get("PYTEST_CURRENT_TEST", "no test").rsplit(" (", 1)[0]
        request = f"{scope['method']} {scope['path']} (sent by {test})"
        with self._changed:
            self._running.append(request)
        try:
            await self.app(scope, receive, send)
        finally:
            with self._changed:
                self._running.remove(request)
                self._changed.notify_all()

    def wait_until_idle(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds for the requests in progress to end; return
        those still running."""
        with self._changed:
            self._changed.wait_for(lambda: not self._running, timeout)
            return list(self._running)


# debug=True: a 500's body is its traceback, which raise_server_errors shows.
API_APP = RequestsInFlight(create_app(debug=True))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """A fixture's requests end with the setup: see :func:`pytest_runtest_call`."""
    try:
        return (yield)
    finally:
        _wait_for_the_server()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A test ends only once the server is done with its requests, and before its
    fixtures are undone: a late handler still sees the test's database and its mocks."""
    try:
        return (yield)
    finally:
        _wait_for_the_server()


def _wait_for_the_server() -> None:
    running = API_APP.wait_until_idle(REQUEST_TIMEOUT)
    if running:
        pytest.fail(
            f"the server was still handling {', '.join(running)} {REQUEST_TIMEOUT:.0f}s "
            "later: what it writes would land in the next test's database"
        )


@pytest.fixture(scope="session")
def api_url() -> Iterator[str]:
    """The base URL of a server running the API for the whole session."""
    # IPPROTO_TCP explicitly: only then does asyncio set TCP_NODELAY on the accepted
    # connections; without it every keep-alive response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))  # an ephemeral port, known before the server starts
    host, port = sock.getsockname()
    config = uvicorn.Config(
        API_APP,
        log_config=None,  # leave logging to pytest
        access_log=False,
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="api-test-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            pytest.fail(f"the API test server did not start on {host}:{port}")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT)
        sock.close()
        if thread.is_alive():
            pytest.fail(f"the API test server did not stop within {SHUTDOWN_TIMEOUT:.0f}s")


def raise_server_errors(response: httpx.Response) -> None:
    """A 500 fails the test that sent the request, with the server's traceback: uvicorn
    logs it only after the response is sent, often under the next test."""
    if response.status_code == 500:
        response.read()
        request = response.request
        raise AssertionError(
            f"the server failed on {request.method} {request.url}:\n{response.text}"
        )


@pytest.fixture
def api(api_url: str, _tls_context: ssl.SSLContext) -> Iterator[httpx.Client]:
    """An HTTP client for the session's server, safe to share between threads; a 500 fails
    the test (a test that expects one uses a client of its own).

    Each test has its own client, so its own connections: uvicorn closes the connection of
    a request that failed only after logging the traceback, and a client kept for the
    session could send the next test's request on it. It holds no database: each request
    uses the database of the test that sends it.
    """
    hooks = {"response": [raise_server_errors]}
    with httpx.Client(
        base_url=api_url, timeout=REQUEST_TIMEOUT, event_hooks=hooks, verify=_tls_context
    ) as client:
        yield client


@pytest.fixture(scope="session")
def _tls_context() -> ssl.SSLContext:
    """Loaded once: a client loads the CA bundle itself (~25 ms), though this server
    speaks plain HTTP."""
    return httpx.create_ssl_context()
