"""The tracking-server probe (sweep/tracking.py check_server) against a stand-in HTTP server on localhost.

The real server, on a real PostgreSQL, is tests/test_postgres.py (`make test-postgres`); these cover the
answers that one cannot produce cheaply, and run in `make test`.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sweep import names, tracking
from sweep.errors import ConfigError

DB_DOWN = (503, json.dumps({"error_code": "TEMPORARILY_UNAVAILABLE",
                            "message": "(psycopg.OperationalError) connection failed: Connection refused\n..."}))


class StandIn:
    """/health answers 200; the experiment search answers `api` (status, body). Counts the requests."""

    def __init__(self, api: tuple[int, str]):
        self.api, self.requests = api, []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                stand_in.requests.append(self.path)
                status, body = (200, "OK") if self.path == "/health" else stand_in.api
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if body.startswith("{") else "text/plain")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def fresh_probe_cache(monkeypatch):
    """A port can come back in a later test: no answer is carried over from one test to the next."""
    monkeypatch.setattr(tracking, "_server_problems", {})


@pytest.fixture
def stand_in(request):
    server = StandIn(request.param)
    yield server
    server.close()


@pytest.mark.parametrize("stand_in, phrases", [
    (DB_DOWN, ["cannot use its database", "HTTP 503", "psycopg.OperationalError", "PostgreSQL"]),
    ((403, "Invalid Host header - possible DNS rebinding attack detected"),
     ["refuses this host name", "MLFLOW_EXTRA_ALLOWED_HOSTS"]),
    ((401, "You are not authenticated."), ["MLFLOW_TRACKING_USERNAME"]),
    ((404, "<html>not found</html>"), ["not as an MLflow tracking server", "HTTP 404"]),
], indirect=["stand_in"])
def test_probe_names_the_problem(stand_in, phrases):
    with pytest.raises(ConfigError) as raised:
        tracking.check_server(stand_in.url)
    message = str(raised.value)
    assert message.startswith(f"invalid config: tracking.uri='{stand_in.url}': ")
    assert "\n" not in message  # one line: the server's multi-line message is cut
    for phrase in phrases:
        assert phrase in message, message


@pytest.mark.parametrize("stand_in", [(200, json.dumps({"experiments": []}))], indirect=True)
def test_probe_passes_once_per_uri(stand_in):
    tracking.check_server(stand_in.url)
    tracking.check_server(stand_in.url)
    assert stand_in.requests == ["/health", "/api/2.0/mlflow/experiments/search?max_results=1"]


def test_probe_of_a_port_nobody_listens_on():
    from slurm_cluster import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError, match=r"no MLflow tracking server answers there \(\[Errno 111\] Connection refused\)"):
        tracking.check_server(uri)


@pytest.mark.parametrize("stand_in", [DB_DOWN], indirect=True)
def test_sweep_with_the_database_down_exits_2_before_any_job(stand_in, sweep):
    """The real entry point: one error line, exit 2, no job, nothing logged locally instead."""
    sweep.uri = stand_in.url
    result = sweep.run("sparsity.density=1,0.5", multirun=True)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"tracking.uri='{stand_in.url}'" in errors[0], result.stderr[-3000:]
    assert "cannot use its database" in errors[0] and errors[0].endswith("nothing was run or logged")
    assert "skipping invalid point" not in result.stderr  # checked once, before the points
    assert not list(sweep.tmp.rglob(names.RESULT_FILE)) and not list(sweep.tmp.rglob("*.db"))
    # the launching process asked once (the points' validation reused the answer); no job asked
    assert stand_in.requests.count("/health") == 1, stand_in.requests
