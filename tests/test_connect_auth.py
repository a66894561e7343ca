"""Which credentials `connect` hands to which client, checked without a node: the client
classes are replaced by recorders that answer as a chosen server would.

The rule that matters most: credentials follow the variable the URL came from, even when the
server turns out to be the other engine, so a node is never sent the other node's secrets.
"""
from __future__ import annotations

import json
import traceback

import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from elasticsearch import Elasticsearch as RealElasticsearch

from sparcode.pipeline import connect as connect_module
from sparcode.pipeline.connect import ConnectionProblem, WrongEngine, connect
from sparcode.pipeline.engine_es import ElasticsearchEngine
from sparcode.pipeline.engine_os import OpenSearchEngine

VARIABLES = [f"{prefix}_{key}" for prefix in ("ELASTICSEARCH", "OPENSEARCH")
             for key in ("URL", "API_KEY", "USERNAME", "PASSWORD", "CA_CERTS")]
ES_URL, OS_URL = "https://es.example:9200", "https://os.example:9201"
ES_SECRETS = {"ELASTICSEARCH_API_KEY": "es-api-key-s3cret", "ELASTICSEARCH_USERNAME": "es-user",
              "ELASTICSEARCH_PASSWORD": "es-pass-s3cret", "ELASTICSEARCH_CA_CERTS": "certs/es-ca.pem"}
OS_SECRETS = {"OPENSEARCH_USERNAME": "os-user", "OPENSEARCH_PASSWORD": "os-pass-s3cret",
              "OPENSEARCH_CA_CERTS": "certs/os-ca.pem"}


class Server:
    """What the node behind every URL is: "elasticsearch", "opensearch", "neither" or "refuses"."""
    kind = "elasticsearch"


def _meta(status: int) -> ApiResponseMeta:
    return ApiResponseMeta(status=status, http_version="1.1", headers=HttpHeaders(), duration=0.0,
                           node=NodeConfig("https", "es.example", 9200))


class FakeElasticsearch:
    made: list = []

    def __init__(self, url, **kwargs):
        FakeElasticsearch.made.append((url, kwargs))
        self.nodes = self

    def info(self, node_id, metric):
        from elasticsearch import AuthenticationException, UnsupportedProductError

        if Server.kind == "elasticsearch":
            return {"nodes": {"n1": {"version": "8.15.0"}}}
        if Server.kind == "refuses":
            raise AuthenticationException("unable to authenticate user [es-user]", _meta(401), {})
        raise UnsupportedProductError("not Elasticsearch", _meta(200), {})


class FakeOpenSearch:
    made: list = []

    def __init__(self, hosts, **kwargs):
        FakeOpenSearch.made.append((hosts, kwargs))

    def info(self):
        from opensearchpy import AuthenticationException

        if Server.kind == "opensearch":
            return {"version": {"distribution": "opensearch", "number": "2.15.0"}}
        if Server.kind == "refuses":
            raise AuthenticationException(401, "security_exception", {})
        return {"version": {"number": "8.15.0"}}  # what Elasticsearch says to GET /


@pytest.fixture(autouse=True)
def clients(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the CA_CERTS paths above are relative, and must exist
    (tmp_path / "certs").mkdir()
    for name in ("es-ca.pem", "os-ca.pem"):
        (tmp_path / "certs" / name).write_text("-----BEGIN CERTIFICATE-----\n")
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # from_settings imports the client class when called, so the library attribute is the seam.
    monkeypatch.setattr("elasticsearch.Elasticsearch", FakeElasticsearch)
    monkeypatch.setattr("opensearchpy.OpenSearch", FakeOpenSearch)
    monkeypatch.setattr(Server, "kind", "elasticsearch")
    FakeElasticsearch.made, FakeOpenSearch.made = [], []


def environment(monkeypatch, **variables):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def auth_of(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k in ("api_key", "basic_auth", "http_auth", "ca_certs")}


def test_an_api_key_is_sent_instead_of_username_and_password(monkeypatch):
    environment(monkeypatch, ELASTICSEARCH_URL=ES_URL, **ES_SECRETS, **OS_SECRETS)
    engine = connect()
    assert isinstance(engine, ElasticsearchEngine) and engine.version == "8.15.0" and engine.url == ES_URL
    (url, kwargs), = FakeElasticsearch.made
    assert url == ES_URL and kwargs["request_timeout"] == 30.0
    assert auth_of(kwargs) == {"api_key": "es-api-key-s3cret", "ca_certs": "certs/es-ca.pem"}
    assert FakeOpenSearch.made == []


def test_username_and_password_are_basic_auth(monkeypatch):
    environment(monkeypatch, ELASTICSEARCH_URL=ES_URL, ELASTICSEARCH_USERNAME="es-user",
                ELASTICSEARCH_PASSWORD="es-pass-s3cret")
    connect()
    (_, kwargs), = FakeElasticsearch.made
    assert auth_of(kwargs) == {"basic_auth": ("es-user", "es-pass-s3cret")}


def test_no_credentials_send_none(monkeypatch):
    environment(monkeypatch, ELASTICSEARCH_URL=ES_URL, **OS_SECRETS)  # another engine's are not borrowed
    connect()
    (_, kwargs), = FakeElasticsearch.made
    assert auth_of(kwargs) == {}


def test_an_opensearch_url_uses_the_opensearch_credentials(monkeypatch):
    environment(monkeypatch, OPENSEARCH_URL=OS_URL, **ES_SECRETS, **OS_SECRETS)
    monkeypatch.setattr(Server, "kind", "opensearch")
    engine = connect()
    assert isinstance(engine, OpenSearchEngine) and engine.version == "2.15.0" and engine.url == OS_URL
    (hosts, kwargs), = FakeOpenSearch.made
    assert hosts == [OS_URL] and kwargs["timeout"] == 30.0
    assert auth_of(kwargs) == {"http_auth": ("os-user", "os-pass-s3cret"), "ca_certs": "certs/os-ca.pem"}
    assert FakeElasticsearch.made == []


def test_elasticsearch_url_wins_when_both_are_set(monkeypatch):
    environment(monkeypatch, ELASTICSEARCH_URL=ES_URL, OPENSEARCH_URL=OS_URL, **ES_SECRETS, **OS_SECRETS)
    connect()
    (url, kwargs), = FakeElasticsearch.made
    assert url == ES_URL and auth_of(kwargs)["api_key"] == "es-api-key-s3cret"


def test_an_elasticsearch_url_serving_opensearch_gets_the_elasticsearch_credentials(monkeypatch):
    environment(monkeypatch, ELASTICSEARCH_URL=ES_URL, ELASTICSEARCH_USERNAME="es-user",
                ELASTICSEARCH_PASSWORD="es-pass-s3cret", ELASTICSEARCH_CA_CERTS="certs/es-ca.pem", **OS_SECRETS)
    monkeypatch.setattr(Server, "kind", "opensearch")
    engine = connect()
    assert isinstance(engine, OpenSearchEngine) and engine.url == ES_URL
    assert [url for url, _ in FakeElasticsearch.made] == [ES_URL]  # tried first, answered "not me"
    (hosts, kwargs), = FakeOpenSearch.made
    assert hosts == [ES_URL]
    assert auth_of(kwargs) == {"http_auth": ("es-user", "es-pass-s3cret"), "ca_certs": "certs/es-ca.pem"}


def test_an_opensearch_url_serving_elasticsearch_gets_the_opensearch_credentials(monkeypatch):
    environment(monkeypatch, OPENSEARCH_URL=OS_URL, **ES_SECRETS, **OS_SECRETS)
    engine = connect()  # the server is Elasticsearch
    assert isinstance(engine, ElasticsearchEngine) and engine.url == OS_URL
    assert [hosts for hosts, _ in FakeOpenSearch.made] == [[OS_URL]]
    (url, kwargs), = FakeElasticsearch.made
    assert url == OS_URL
    assert auth_of(kwargs) == {"basic_auth": ("os-user", "os-pass-s3cret"), "ca_certs": "certs/os-ca.pem"}


@pytest.mark.parametrize("name, url, wanted", [
    ("elasticsearch", ES_URL, {"api_key": "es-api-key-s3cret", "ca_certs": "certs/es-ca.pem"}),
    ("opensearch", OS_URL, {"http_auth": ("os-user", "os-pass-s3cret"), "ca_certs": "certs/os-ca.pem"}),
])
def test_a_named_engine_reads_its_own_variables(monkeypatch, name, url, wanted):
    environment(monkeypatch, ELASTICSEARCH_URL=ES_URL, OPENSEARCH_URL=OS_URL, **ES_SECRETS, **OS_SECRETS)
    monkeypatch.setattr(Server, "kind", name)
    engine = connect(engine=name)
    assert engine.name == name and engine.url == url
    made = FakeElasticsearch.made if name == "elasticsearch" else FakeOpenSearch.made
    (_, kwargs), = made
    assert auth_of(kwargs) == wanted
    assert len(FakeElasticsearch.made) + len(FakeOpenSearch.made) == 1


@pytest.mark.parametrize("name", ["elasticsearch", "opensearch"])
def test_a_missing_ca_file_is_named_before_any_client_is_made(monkeypatch, name):
    prefix = name.upper()
    environment(monkeypatch, **{f"{prefix}_URL": ES_URL, f"{prefix}_CA_CERTS": "certs/missing.pem"})
    with pytest.raises(ConnectionProblem, match=rf"^{prefix}_CA_CERTS is certs/missing.pem, which is not a file$"):
        connect(engine=name)
    assert FakeElasticsearch.made == FakeOpenSearch.made == []


SECRETS = ("s3cret", "urlpass")


def assert_no_secret(exc: BaseException):
    shown = "".join(traceback.format_exception(exc))
    for secret in SECRETS:
        assert secret not in shown, shown


def test_neither_engine_names_the_url_without_its_password(monkeypatch):
    url = "https://elastic:urlpass@es.example:9200"
    environment(monkeypatch, ELASTICSEARCH_URL=url, **ES_SECRETS)
    monkeypatch.setattr(Server, "kind", "neither")
    with pytest.raises(WrongEngine) as info:
        connect()
    assert str(info.value) == (
        "https://***@es.example:9200 answers neither as Elasticsearch (no X-Elastic-Product header) nor as "
        "OpenSearch (no version.distribution in GET /); check ELASTICSEARCH_URL")
    assert len(FakeElasticsearch.made) == len(FakeOpenSearch.made) == 1
    assert_no_secret(info.value)


@pytest.mark.parametrize("name, hint", [("elasticsearch", "check ELASTICSEARCH_API_KEY or ELASTICSEARCH_USERNAME"),
                                        ("opensearch", "check OPENSEARCH_USERNAME/PASSWORD")])
def test_refused_credentials_are_named_not_shown(monkeypatch, name, hint):
    url = "https://elastic:urlpass@node.example:9200"
    environment(monkeypatch, ELASTICSEARCH_URL=url, OPENSEARCH_URL=url, **ES_SECRETS, **OS_SECRETS)
    monkeypatch.setattr(Server, "kind", "refuses")
    with pytest.raises(ConnectionProblem) as info:
        connect(engine=name)
    assert "refused our credentials (HTTP 401)" in str(info.value) and hint in str(info.value)
    assert "https://***@node.example:9200" in str(info.value)
    assert_no_secret(info.value)


def test_a_url_the_client_cannot_parse_is_quoted_without_its_password(monkeypatch):
    # The real client: its own message quotes the whole URL, password included.
    monkeypatch.setattr("elasticsearch.Elasticsearch", RealElasticsearch)
    url = "http://elastic:urlpass@es.example:99999"
    environment(monkeypatch, ELASTICSEARCH_URL=url, ELASTICSEARCH_PASSWORD="es-pass-s3cret",
                ELASTICSEARCH_USERNAME="es-user")
    with pytest.raises(ConnectionProblem) as info:
        connect()
    assert str(info.value).startswith("bad node URL (--url or ELASTICSEARCH_URL) 'http://***@es.example:99999': ")
    assert_no_secret(info.value)


def test_auth_reads_only_its_own_prefix(monkeypatch):
    environment(monkeypatch, **ES_SECRETS, **OS_SECRETS)
    assert connect_module._auth("elasticsearch") == {
        "api_key": "es-api-key-s3cret", "username": "es-user", "password": "es-pass-s3cret",
        "ca_certs": "certs/es-ca.pem"}
    assert connect_module._auth("opensearch") == {
        "api_key": None, "username": "os-user", "password": "os-pass-s3cret", "ca_certs": "certs/os-ca.pem"}



def test_a_url_refusing_the_elasticsearch_credentials_names_the_flag_for_opensearch(monkeypatch):
    """Detection at a --url never sends OPENSEARCH_* secrets after ELASTICSEARCH_* ones were
    refused; the message says how to send the right ones."""
    from sparcode.pipeline.connect import CredentialsRefused

    environment(monkeypatch, **OS_SECRETS)
    monkeypatch.setattr(Server, "kind", "refuses")
    with pytest.raises(CredentialsRefused, match="say so .index/reindex: --engine opensearch; search/evaluate: "
                                                 "--backend opensearch. to send OPENSEARCH_"):
        connect(OS_URL)
    assert FakeOpenSearch.made == []
    monkeypatch.setattr(Server, "kind", "opensearch")
    assert isinstance(connect(OS_URL, engine="opensearch"), OpenSearchEngine)
    (_, kwargs), = FakeOpenSearch.made
    assert auth_of(kwargs)["http_auth"] == ("os-user", "os-pass-s3cret")


@pytest.mark.parametrize("name, prefix, home_var, default", [
    ("elasticsearch", "ELASTICSEARCH", "SPARCODE_ES_HOME", 9250),
    ("opensearch", "OPENSEARCH", "SPARCODE_OPENSEARCH_HOME", 9260),
])
def test_without_a_url_the_local_node_is_found_on_the_port_it_was_started_on(monkeypatch, tmp_path, name, prefix,
                                                                              home_var, default):
    # `es start --port 9399` (the default taken by another program) must not send the next
    # `sparcode index` to that other program on the default port.
    monkeypatch.delenv(f"{prefix}_URL", raising=False)
    monkeypatch.setenv(home_var, str(tmp_path))
    assert connect_module.engine_url(name) == f"http://127.0.0.1:{default}"  # never started here
    (tmp_path / "node.json").write_text(json.dumps({"port": 9399, "heap": "1g"}))
    assert connect_module.engine_url(name) == "http://127.0.0.1:9399"
    monkeypatch.setenv(f"{prefix}_URL", "http://node:9200")
    assert connect_module.engine_url(name) == "http://node:9200"
