"""How the clients' failures without an answer reach the build: a timeout is not a refusal."""
import pytest


@pytest.mark.parametrize("engine_name", ["elasticsearch", "opensearch"])
def test_a_request_timeout_is_told_apart_from_a_refused_connection(engine_name):
    """A timed-out request may still be running in the node (a merge); the build must know."""
    import socket

    from sparcode.pipeline.connect import engine_class
    from sparcode.pipeline.engine import EngineTimeout, EngineUnavailable

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        engine = engine_class(engine_name).from_settings(url, {}, request_timeout=0.3)
        with pytest.raises(EngineTimeout):
            engine.refresh("x")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: refused
        engine = engine_class(engine_name).from_settings(url, {}, request_timeout=0.3)
        with pytest.raises(EngineUnavailable) as refused:
            engine.refresh("x")
        assert not isinstance(refused.value, EngineTimeout)


def test_a_search_that_times_out_is_not_sent_again(monkeypatch):
    """Someone waits for a search: five request timeouts would be minutes."""
    import tenacity

    from sparcode.pipeline.backends import ServedIndex
    from sparcode.pipeline.engine import EngineError, EngineTimeout

    monkeypatch.setattr(tenacity.nap.time, "sleep", lambda seconds: None)
    sent = []

    class Node:
        def __init__(self, failures):
            self.failures = list(failures)

        def msearch(self, alias, bodies):
            sent.append(len(bodies))
            if self.failures:
                raise self.failures.pop(0)
            return [{"hits": {"hits": []}} for _ in bodies]

    served = ServedIndex.__new__(ServedIndex)  # only the sending half is under test
    served.engine, served.alias, served.retries = Node([EngineTimeout("ConnectionTimeout: read timed out")]), "a", None
    with pytest.raises(EngineTimeout):
        served._send_batch([{}, {}])
    assert sent == [2]
    sent.clear()
    served.engine = Node([EngineError(429, "busy")])  # a busy answer is still worth another try
    assert len(served._send_batch([{}, {}])) == 2 and sent == [2, 2]


@pytest.fixture
def html_node():
    """A node that answers every request 200 with an HTML page (a proxy's error page)."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def _page(self):
            body = b"<html>oops</html>"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_HEAD = _page

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_an_opensearch_answer_that_is_not_json_is_one_line(html_node):
    from sparcode.pipeline.connect import ConnectionProblem, engine_class
    from sparcode.pipeline.engine import EngineUnavailable

    engine = engine_class("opensearch").from_settings(html_node, {}, request_timeout=2)
    with pytest.raises(ConnectionProblem, match="did not answer like OpenSearch: its answer to GET / is not JSON"):
        engine.check()
    with pytest.raises(EngineUnavailable, match="answer is not JSON .'<html>oops</html>'"):
        engine.refresh("x")
