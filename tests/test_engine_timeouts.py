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
