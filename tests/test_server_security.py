"""The daemon's door: loopback by default, Host-header check (DNS rebinding), CORS allow-list, API key."""
from __future__ import annotations

import subprocess
import sys

import httpx
import openai
import pytest

from daemon_helpers import running_daemon
from localllm.server.security import host_name
from localllm.server.settings import ServerSettings, is_loopback
from tiny_models import build_model_dir

KEY = "test-key-0123456789"
ALLOWED_ORIGIN = "http://allowed.example:3000"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_model_dir("qwen2", tmp_path_factory.mktemp("models") / "tiny-qwen2"))


@pytest.fixture(scope="module")
def daemon(tiny, tmp_path_factory):
    args = ["--cors-origin", ALLOWED_ORIGIN, "--allow-host", "myhost.test"]
    with running_daemon(tmp_path_factory.mktemp("daemon"), models=[tiny], args=args, api_key=KEY) as d:
        yield d


def raw(daemon, headers=None, key=True):
    """An httpx client with no API key unless asked, and exactly the headers given."""
    base = {"Authorization": f"Bearer {KEY}"} if key else {}
    return httpx.Client(base_url=daemon.url, headers={**base, **(headers or {})}, timeout=60)


def assert_refused(response, status, code):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and set(error) == {"message", "type", "param", "code"}


def test_defaults_bind_loopback_and_need_a_key_elsewhere():
    assert ServerSettings().host == "127.0.0.1"
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.3.4.5"):
        assert is_loopback(host)
    for host in ("0.0.0.0", "192.168.1.10", "::", "example.com"):
        assert not is_loopback(host)
        with pytest.raises(ValueError, match="needs an API key"):
            ServerSettings(host=host)
    assert ServerSettings(host="0.0.0.0", api_key="k").api_key == "k"


def test_the_daemon_refuses_to_start_on_a_public_address_without_a_key(tmp_path):
    result = subprocess.run([sys.executable, "-m", "localllm", "serve", "--host", "0.0.0.0", "--port", "0",
                             "--state-file", str(tmp_path / "s.json")], capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in __import__("os").environ.items() if k != "LOCALLLM_API_KEY"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "needs an API key" in result.stderr
    assert not (tmp_path / "s.json").exists()


def test_api_key_guards_every_route_but_health(daemon):
    with raw(daemon, key=False) as c:
        assert c.get("/health").status_code == 200
        for method, path in [("GET", "/v1/models"), ("GET", "/api/status"), ("GET", "/metrics"),
                             ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/api/unload"),
                             ("GET", "/v1/nothing")]:
            r = c.request(method, path, json={})
            assert_refused(r, 401, "invalid_api_key")
            assert r.headers["www-authenticate"] == "Bearer"
    with raw(daemon, {"Authorization": "Bearer wrong"}, key=False) as c:
        assert_refused(c.get("/v1/models"), 401, "invalid_api_key")
    with raw(daemon, {"Authorization": KEY}, key=False) as c:   # no "Bearer"
        assert_refused(c.get("/v1/models"), 401, "invalid_api_key")
    with raw(daemon) as c:
        assert c.get("/api/status").status_code == 200


def test_openai_client_with_and_without_the_key(daemon, tiny):
    r = daemon.openai().chat.completions.create(model=tiny, messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=3, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3
    anonymous = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.evil.example",
                                  "localhost.evil.example", "192.168.0.10", "myhost.test.evil"])
def test_forged_host_headers_are_refused(daemon, host):
    with raw(daemon, {"Host": host}) as c:
        assert_refused(c.get("/v1/models"), 403, "host_not_allowed")
        assert_refused(c.get("/health"), 403, "host_not_allowed")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST:1234", "[::1]:80", "myhost.test",
                                  "myhost.test:11435", "app.localhost"])
def test_loopback_and_allowed_hosts_pass(daemon, host):
    with raw(daemon, {"Host": host}) as c:
        assert c.get("/v1/models").status_code == 200


def test_host_name_parsing():
    assert host_name("LocalHost:8080") == "localhost"
    assert host_name("[::1]:8080") == "::1"
    assert host_name("example.com.") == "example.com"


def test_cross_origin_requests_need_an_allowed_origin(daemon):
    with raw(daemon, {"Origin": "http://evil.example"}) as c:
        assert_refused(c.get("/v1/models"), 403, "origin_not_allowed")
        preflight = c.options("/v1/chat/completions", headers={"Access-Control-Request-Method": "POST"})
        assert_refused(preflight, 403, "origin_not_allowed")
    with raw(daemon, {"Origin": "null"}) as c:
        assert_refused(c.get("/v1/models"), 403, "origin_not_allowed")
    with raw(daemon, {"Origin": ALLOWED_ORIGIN}) as c:
        r = c.get("/v1/models")
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    with raw(daemon, {"Origin": ALLOWED_ORIGIN}, key=False) as c:   # a preflight carries no credentials
        r = c.options("/v1/chat/completions", headers={"Access-Control-Request-Method": "POST",
                                                       "Access-Control-Request-Headers": "authorization, content-type"})
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "authorization" in r.headers["access-control-allow-headers"]
        unauthorised = c.get("/v1/models")   # the browser may read why it was refused
        assert_refused(unauthorised, 401, "invalid_api_key")
        assert unauthorised.headers["access-control-allow-origin"] == ALLOWED_ORIGIN


def test_refusals_are_counted_in_metrics(daemon):
    with raw(daemon) as c:
        text = c.get("/metrics").text
    assert 'localllm_requests_total{endpoint="/v1/models",status="403"}' in text
    assert 'localllm_requests_total{endpoint="/v1/models",status="401"}' in text


def assert_refused_ollama(response, status, fragment):
    """On the Ollama API a refusal is Ollama's shape: its clients read {"error": "..."} as the message."""
    assert response.status_code == status and set(response.json()) == {"error"}, response.text
    assert isinstance(response.json()["error"], str) and fragment in response.json()["error"]


def test_the_ollama_api_has_the_same_door(daemon, tiny):
    import ollama

    routes = [("GET", "/"), ("GET", "/api/tags"), ("GET", "/api/version"), ("POST", "/api/chat"),
              ("POST", "/api/generate"), ("POST", "/api/show"), ("GET", "/api/ps"), ("POST", "/api/pull"),
              ("DELETE", "/api/delete")]
    with raw(daemon, key=False) as c:
        for method, path in routes:
            refused = c.request(method, path, json={"model": tiny})
            assert_refused_ollama(refused, 401, "API key")
            assert refused.headers["www-authenticate"] == "Bearer"
    with raw(daemon, {"Host": "evil.example"}) as c:
        assert_refused_ollama(c.get("/api/tags"), 403, "evil.example")
    with raw(daemon, {"Origin": "http://evil.example"}) as c:
        assert_refused_ollama(c.post("/api/chat", json={}), 403, "http://evil.example")
    with raw(daemon, {"Origin": ALLOWED_ORIGIN}, key=False) as c:
        preflight = c.options("/api/delete", headers={"Access-Control-Request-Method": "DELETE"})
        assert preflight.status_code == 204 and "DELETE" in preflight.headers["access-control-allow-methods"]
    with pytest.raises(ollama.ResponseError) as anonymous:
        ollama.Client(host=daemon.url).list()
    assert anonymous.value.status_code == 401 and "API key" in anonymous.value.error
    client = ollama.Client(host=daemon.url, headers={"Authorization": f"Bearer {KEY}"})
    answer = client.generate(tiny, "hi", raw=True, options={"num_predict": 2})
    assert answer.eval_count == 2 and tiny in [m.model for m in client.list().models]
