"""Hand-made bad requests: non-finite and extreme numbers in every numeric field, lone surrogates, invalid
UTF-8, deep JSON, 10,000 stop strings, n at the limit, huge bodies. Each case is (name, method, path, body)
with the body already encoded, since several of them are not valid JSON."""
from __future__ import annotations

import json

from reliability_checks.server import EMBEDDED

NAN, INF = float("nan"), float("inf")
NUMERIC_FIELDS = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                  "repetition_penalty", "max_tokens", "min_tokens", "n", "seed", "top_logprobs", "keep_alive")
# values the issue found crashing the engine or the daemon, and their neighbours
EXTREMES = [("temperature", v) for v in (1e-300, 1e-45, 5e-324, 1e-10, 1e300)] + [
    ("repetition_penalty", v) for v in (1e-300, 1e-45, 1e300)] + [
    ("presence_penalty", 1e-300), ("frequency_penalty", -1e-300), ("top_p", 1e-300), ("min_p", 1e-300),
    ("top_k", 2 ** 63), ("top_k", 2 ** 31), ("seed", 2 ** 64), ("seed", -2 ** 63 - 1), ("max_tokens", 2 ** 63),
    ("keep_alive", 1e300), ("keep_alive", -1e300), ("keep_alive", 1e-300), ("keep_alive", "5m"),
    ("keep_alive", True)]

Case = tuple[str, str, str, bytes]


def encode(value) -> bytes:
    """JSON as Python writes it: NaN and Infinity as bare words, lone surrogates as \\ud800 escapes."""
    return json.dumps(value, allow_nan=True).encode()


def chat(content="Hi", **fields) -> dict:
    return {"model": EMBEDDED, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **fields}


def completion(prompt="Hi", **fields) -> dict:
    return {"model": EMBEDDED, "prompt": prompt, "max_tokens": 4, **fields}


def post(name: str, body, path: str = "/v1/chat/completions") -> Case:
    return name, "POST", path, body if isinstance(body, bytes) else encode(body)


def numeric_cases() -> list[Case]:
    cases = []
    for field in NUMERIC_FIELDS:
        for value in (NAN, INF, -INF):
            cases.append(post(f"chat {field}={value}", chat(**{field: value})))
            cases.append(post(f"completions {field}={value}", completion(**{field: value}), "/v1/completions"))
    for field, value in EXTREMES:
        for stream in (False, True):
            cases.append(post(f"chat {field}={value!r} stream={stream}", chat(**{field: value}, stream=stream)))
    cases.append(post("chat temperature=Infinity min_tokens=5", chat(temperature=INF, min_tokens=5)))
    cases.append(post("chat temperature=Infinity min_tokens=5 stream", chat(temperature=INF, min_tokens=5,
                                                                              stream=True)))
    cases.append(post("completions logprobs=NaN", completion(logprobs=NAN), "/v1/completions"))
    cases.append(post("completions logprobs=21", completion(logprobs=21), "/v1/completions"))
    cases.append(post("chat top_logprobs=1e9", chat(logprobs=True, top_logprobs=10 ** 9)))
    return cases


def text_cases() -> list[Case]:
    surrogate = "\ud800"
    cases = [post("chat lone surrogate in content", chat(f"a{surrogate}b")),
             post("chat lone low surrogate in content", chat("\udfff")),
             post("chat lone surrogate in system", {**chat(), "messages": [{"role": "system", "content": surrogate},
                                                                          {"role": "user", "content": "Hi"}]}),
             post("chat lone surrogate in stop", chat(stop=[surrogate])),
             post("chat lone surrogate in model", {**chat(), "model": surrogate}),
             post("chat lone surrogate in content part", chat([{"type": "text", "text": surrogate}])),
             post("chat lone surrogate stream", chat(surrogate, stream=True)),
             post("completions lone surrogate", completion(surrogate), "/v1/completions"),
             post("completions lone surrogate in a list", completion(["ok", surrogate]), "/v1/completions"),
             post("/api/unload lone surrogate", {"model": surrogate}, "/api/unload")]
    raw = encode(chat("PLACEHOLDER"))
    for label, bad in (("0xff", b"\xff\xfe"), ("overlong /", b"\xc0\xaf"), ("truncated", b"\xe2\x82"),
                       ("UTF-16 surrogate", b"\xed\xa0\x80")):
        cases.append(post(f"chat invalid UTF-8 ({label}) in content", raw.replace(b"PLACEHOLDER", bad)))
    cases.append(post("chat NUL in content", chat("a\u0000b")))
    cases.append(post("chat invalid UTF-8 in model", raw.replace(b'"' + EMBEDDED.encode() + b'"', b'"\xff"')))
    return cases


def structure_cases(depth: int) -> list[Case]:
    deep_list = b"[" * depth + b"]" * depth
    deep_object = b'{"a":' * depth + b"1" + b"}" * depth
    return [post(f"chat content nested {depth} lists deep", encode(chat()).replace(b'"Hi"', deep_list)),
            post(f"chat unknown field nested {depth} objects deep",
                 encode(chat()).replace(b'"max_tokens"', b'"x": ' + deep_object + b', "max_tokens"')),
            post(f"completions prompt nested {depth} lists deep",
                 encode(completion()).replace(b'"Hi"', deep_list), "/v1/completions"),
            post("empty body", b""), post("body null", b"null"), post("body []", b"[]"), post("body 1", b"1"),
            post("body a string", b'"hello"'), post("truncated JSON", encode(chat())[:-5]),
            post("chat no messages", {**chat(), "messages": []}),
            post("chat message without content", {**chat(), "messages": [{"role": "user"}]}),
            post("chat unknown role", {**chat(), "messages": [{"role": "robot", "content": "x"}]}),
            post("chat content null", chat(None)), post("chat content a number", chat(123)),
            post("chat image part", chat([{"type": "image_url", "image_url": {"url": "http://x/y.png"}}])),
            post("completions empty prompt", completion(""), "/v1/completions"),
            post("completions prompt [[]]", completion([[]]), "/v1/completions"),
            post("completions prompt []", completion([]), "/v1/completions"),
            post("completions token -1", completion([-1]), "/v1/completions"),
            post("completions token 2^63", completion([2 ** 63]), "/v1/completions"),
            post("/api/unload model NaN", b'{"model": NaN}', "/api/unload"),
            post("/api/unload empty", {}, "/api/unload"),
            ("GET /v1/models/%00", "GET", "/v1/models/%00", b""),
            ("GET /v1/models/ invalid UTF-8", "GET", "/v1/models/%ED%A0%80%FF", b""),
            ("GET on a POST route", "GET", "/v1/chat/completions", b""),
            ("DELETE /v1/models", "DELETE", "/v1/models", b"")]


def limit_cases(max_at_once: int, stop_strings: int, huge_bytes: int) -> list[Case]:
    stops = [f"stop{i}" for i in range(stop_strings)]
    return [post(f"chat n={max_at_once} (the limit)", chat(n=max_at_once, max_tokens=1)),
            post(f"chat n={max_at_once + 1} (over the limit)", chat(n=max_at_once + 1, max_tokens=1)),
            post("chat n=2^31", chat(n=2 ** 31)), post("chat n=0", chat(n=0)), post("chat n=-1", chat(n=-1)),
            post(f"completions 2 prompts x n={max_at_once // 2 + 1}",
                 completion(["a", "b"], n=max_at_once // 2 + 1), "/v1/completions"),
            post(f"chat {stop_strings} stop strings", chat(stop=stops)),
            post(f"chat {stop_strings} stop strings stream", chat(stop=stops, stream=True)),
            post("chat 4 stop strings of 10,000 characters", chat(stop=["x" * 10_000] * 4)),
            post("chat empty stop string", chat(stop=[""])),
            post("chat max_tokens past the context", chat(max_tokens=10 ** 7)),
            post(f"chat {stop_strings} messages", {**chat(), "messages": [{"role": "user", "content": "hi"}]
                                                   * stop_strings}),
            post(f"completions {huge_bytes // 8:,} token ids", completion([1] * (huge_bytes // 8)),
                 "/v1/completions"),
            post(f"chat {huge_bytes:,}-byte body", chat("a " * (huge_bytes // 2))),
            post(f"completions {huge_bytes:,}-byte prompt", completion("a " * (huge_bytes // 2)),
                 "/v1/completions")]


def all_cases(max_at_once: int, stop_strings: int = 10_000, depth: int = 100_000,
              huge_bytes: int = 20 << 20) -> list[Case]:
    return numeric_cases() + text_cases() + structure_cases(depth) + limit_cases(max_at_once, stop_strings,
                                                                                 huge_bytes)
