"""Security: a non-loopback bind needs a key; with a key every route but /health needs it; foreign Host and
Origin headers are refused; CORS preflights; traversal names in the API and the CLI never reach the file
system; a planted malicious pickle in a model directory is never unpickled."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import httpx

from reliability_checks.models_on_disk import PICKLE_NAMES, plant_pickles, tiny_model
from reliability_checks.report import Section
from reliability_checks.responses import error_shape_problem
from reliability_checks.server import LocalServer, run_cli

KEY = "reliability-key-0123456789"
ALLOWED_HOST, ALLOWED_ORIGIN = "myhost.test", "http://allowed.example:3000"
FOREIGN_HOSTS = ("evil.example", "evil.example:80", "127.0.0.1.evil.example", "localhost.evil.example",
                 "192.168.0.10", "myhost.test.evil", "0.0.0.0")
TRAVERSALS = ("../../../../etc/passwd", "/etc/passwd", "..", "~/.ssh/id_rsa", "smollm2:135m/../../../etc",
              "test-org/../../etc", "..\\..\\windows", "%2e%2e%2fetc", "file:///etc/passwd", "a/b/c/../../../../x")
FALLBACK_ROUTES = [("GET", "/v1/models"), ("GET", "/v1/models/x"), ("POST", "/v1/chat/completions"),
                   ("POST", "/v1/completions"), ("GET", "/api/status"), ("POST", "/api/unload"), ("GET", "/metrics"),
                   ("GET", "/openapi.json"), ("GET", "/v1/nothing")]


def security(home: Path, command: str = "") -> Section:
    section = Section("security", command)
    _public_bind_needs_a_key(home, section)
    work = home / "security"
    marker = work / "UNPICKLED"
    marker.unlink(missing_ok=True)
    tiny = tiny_model(work)
    planted = plant_pickles(tiny, work / "planted", marker, keep_weights=True)
    pickle_only = plant_pickles(tiny, work / "pickle-only", marker, keep_weights=False)
    args = ["--allow-host", ALLOWED_HOST, "--cors-origin", ALLOWED_ORIGIN, "--model", str(planted),
            "--model", str(pickle_only)]
    with LocalServer(home, args, api_key=KEY) as server:
        _api_key_everywhere(server, section)
        _hosts_and_origins(server, section)
        _api_traversal(server, section, unlisted=tiny)
        _pickles(server, section, planted, pickle_only, marker)
    _cli_traversal(home, section, work)
    return section


def _public_bind_needs_a_key(home: Path, section: Section) -> None:
    result = run_cli(home, "serve", "--host", "0.0.0.0", "--port", "0", timeout=60)
    lines = result.stderr.strip().splitlines()
    section.check("`serve --host 0.0.0.0` without a key refuses to start, with one Error: line",
                  result.returncode != 0 and len(lines) == 1 and lines[0].startswith("Error:"), " | ".join(lines))


def _routes(server: LocalServer) -> list[tuple[str, str]]:
    """Every operation of the served schema (or a fixed list when none is served), paths filled in."""
    with server.http(timeout=30) as http:
        response = http.get("/openapi.json")
    if response.status_code != 200:
        return FALLBACK_ROUTES
    routes = [(method.upper(), path.replace("{model}", "x").replace("{model:path}", "x"))
              for path, item in response.json().get("paths", {}).items() for method in item
              if method in ("get", "post", "put", "delete", "patch")]
    return routes + [("GET", "/v1/nothing")]


def _api_key_everywhere(server: LocalServer, section: Section) -> None:
    routes = _routes(server)
    bad = []
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                response = anonymous.request(method, path, json={}, headers=headers)
                expected = 200 if path == "/health" else 401
                shape = error_shape_problem(401, response.content, path) if expected == 401 else None
                if response.status_code != expected or shape:
                    bad.append(f"{method} {path} {headers or 'no key'} -> {response.status_code}")
    section.figures["routes_checked_for_the_key"] = len(routes)
    section.check("with a key set, every route but /health answers 401 without it (missing, wrong, no Bearer)",
                  not bad, "; ".join(bad[:6]))


def _refused(response: httpx.Response, status: int, code: str) -> bool:
    if response.status_code != status:
        return False
    return error_shape_problem(status, response.content) is None and response.json()["error"]["code"] == code


def _hosts_and_origins(server: LocalServer, section: Section) -> None:
    with server.http(timeout=60) as http:
        foreign = [h for h in FOREIGN_HOSTS for path in ("/v1/models", "/health")
                   if not _refused(http.get(path, headers={"Host": h}), 403, "host_not_allowed")]
        allowed = [h for h in ("localhost", "127.0.0.1:9", "[::1]", ALLOWED_HOST)
                   if http.get("/v1/models", headers={"Host": h}).status_code != 200]
        evil = {"Origin": "http://evil.example"}
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        origins_ok = (_refused(http.get("/v1/models", headers=evil), 403, "origin_not_allowed")
                      and _refused(http.get("/v1/models", headers={"Origin": "null"}), 403, "origin_not_allowed")
                      and _refused(http.options("/v1/chat/completions", headers={**evil, **preflight}), 403,
                                   "origin_not_allowed"))
        allowed_get = http.get("/v1/models", headers={"Origin": ALLOWED_ORIGIN})
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:   # a preflight carries no credentials
        answer = anonymous.options("/v1/chat/completions", headers={"Origin": ALLOWED_ORIGIN, **preflight})
    section.check(f"{len(FOREIGN_HOSTS)} foreign Host headers get 403 host_not_allowed (API and /health)",
                  not foreign, ", ".join(foreign))
    section.check("loopback names and --allow-host names pass", not allowed, ", ".join(allowed))
    section.check("foreign and null Origins get 403 origin_not_allowed, preflight included", origins_ok)
    section.check("an allowed Origin gets Access-Control-Allow-Origin; its preflight 204 without the key",
                  allowed_get.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN
                  and answer.status_code == 204
                  and answer.headers.get("access-control-allow-origin") == ALLOWED_ORIGIN,
                  f"GET {allowed_get.status_code}, preflight {answer.status_code}")


def _api_traversal(server: LocalServer, section: Section, unlisted: Path) -> None:
    """Model names that are paths or climb out of the store: 404 model_not_found, never a load."""
    names = list(TRAVERSALS) + [str(unlisted), str(unlisted) + "/../" + unlisted.name]
    bad = []
    with server.http(timeout=120) as http:
        for name in names:
            answers = [http.post("/v1/chat/completions", json={"model": name, "max_tokens": 1,
                                                               "messages": [{"role": "user", "content": "x"}]}),
                       http.post("/v1/completions", json={"model": name, "prompt": "x", "max_tokens": 1})]
            bad += [f"{name!r} -> {a.status_code}" for a in answers if not _refused(a, 404, "model_not_found")]
            # in a path, ".." may be resolved by the client to another route: any 404 in OpenAI's shape will do
            for answer in (http.get(f"/v1/models/{quote(name, safe='')}"),
                           http.post("/api/unload", json={"model": name})):
                if answer.status_code != 404 or error_shape_problem(404, answer.content):
                    bad.append(f"{answer.request.method} {answer.request.url.path} {name!r} -> {answer.status_code}")
        loaded = [m["name"] for m in http.get("/api/status").json()["models"]]
    section.figures["api_traversal_names"] = len(names)
    section.check("traversal and unlisted-path model names get 404 model_not_found on every route",
                  not bad, "; ".join(bad[:6]))
    section.check("none of them got loaded", not any(n in loaded for n in names), str(loaded))


def _pickles(server: LocalServer, section: Section, planted: Path, pickle_only: Path, marker: Path) -> None:
    with server.http(timeout=300) as http:
        served = http.post("/v1/completions", json={"model": str(planted), "prompt": "The quick", "max_tokens": 2})
        refused = http.post("/v1/completions", json={"model": str(pickle_only), "prompt": "x", "max_tokens": 1})
    section.figures.update({"planted_pickles": list(PICKLE_NAMES),
                            "model_with_pickles_beside_safetensors": served.status_code,
                            "model_with_only_pickles": f"{refused.status_code} {refused.text[:160]}"})
    section.check("a model with planted pickles loads from its safetensors", served.status_code == 200,
                  served.text[:200])
    section.check("a model with only pickles is refused with an error in OpenAI's shape",
                  refused.status_code >= 400 and not error_shape_problem(refused.status_code, refused.content),
                  refused.text[:200])
    section.check("no pickle was ever unpickled (no marker file)", not marker.exists(), str(marker))


def _cli_traversal(home: Path, section: Section, work: Path) -> None:
    """rm/show/pull with names that climb out of the store: one Error: line, exit 1, nothing outside touched."""
    victim = work / "victim"
    victim.mkdir(exist_ok=True)
    (victim / "keep.txt").write_text("must survive")
    store_relative = Path("..") / ".." / ".." / victim.relative_to(victim.anchor)
    names = [str(victim), "../victim", f"test-org/../../{victim.name}", str(store_relative), "../../../etc/passwd"]
    bad = []
    for verb in ("rm", "show", "pull"):
        for name in names:
            if verb == "pull" and Path(name).exists():
                continue   # pulling an existing local directory registers it by design
            result = run_cli(home, verb, name, timeout=120)
            lines = result.stderr.strip().splitlines()
            if result.returncode != 1 or len(lines) != 1 or not lines[0].startswith("Error:"):
                bad.append(f"{verb} {name!r}: exit {result.returncode}, {result.stderr.strip()[-120:]!r}")
    listed = json.loads(run_cli(home, "list", "--json", timeout=60).stdout or "[]")
    section.check("traversal names in `localllm rm/show/pull` fail with one Error: line", not bad, "; ".join(bad[:4]))
    section.check("nothing outside the store was removed or registered",
                  (victim / "keep.txt").exists() and not listed, f"store lists {listed}")
