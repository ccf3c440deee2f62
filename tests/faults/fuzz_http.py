"""Malformed HTTP against every API route of a live mn-node (real Redis, real daemon).

The route list is read from the application itself (``build_app`` + the job routes), so a
route added later is fuzzed too. For every route (every method aiohttp registers, HEAD
included) the fuzzer sends

* a fixed catalogue of header-level malformations over raw loopback sockets: broken request
  lines and versions, headers without colon / with NUL / non-UTF-8 bytes / obs-folds, huge
  headers and URLs, bad, negative, duplicated and lying Content-Length, broken chunked
  encoding, CL + TE together, duplicated and non-UTF-8 Authorization, odd Expect;
* ``per_route`` seeded random requests through ``http.client``: wrong methods, every kind of
  Authorization header, odd path parameters and query strings, bad JSON (truncated, deeply
  nested, wrong top-level and field types, NaN, duplicates), non-UTF-8 bodies, bad
  Content-Type/charset, bodies over the API's body cap.

Judging each answer: never a 5xx, never a dropped connection or a timeout (except where the
request itself never completes: then closing is the only correct answer), every 4xx carries
a reason (a JSON object with a non-empty ``error``; for requests the HTTP parser refuses before
any route exists, aiohttp's own ``400`` with a non-empty text reason), a 2xx only for
requests that may in fact be valid. After every route: the daemon is alive and
``/api/v1/health`` answers 200. At the end the node's log must not contain
``API handler failed`` (an exception a handler did not map to a 4xx).
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mn_node.api import MAX_BODY

TIMEOUT = 8.0
HUGE = MAX_BODY + 1024 * 1024  # over the API's body cap (mn_node.api.MAX_BODY)


@dataclass
class Case:
    route: str                   # "METHOD /template" this case is filed under
    kind: str
    method: str
    target: bytes                # request-target as sent (raw bytes, may be malformed)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    raw: bytes | None = None     # full request bytes (raw-socket cases); None: http.client
    expect: str = "4xx"          # "4xx": must be refused; "any": 2xx allowed too
    parser: bool = False         # refused by the HTTP parser: aiohttp's text reason is accepted
    half_close: bool = False     # shut our write side after sending (request never completes)
    incomplete: bool = False     # closing without an answer is correct (the request never completed)

    def describe(self) -> str:
        head = self.raw[:160] if self.raw is not None else self.method.encode() + b" " + self.target[:120]
        return f"{self.route} [{self.kind}] {head!r}"


@dataclass
class Answer:
    status: int | None
    ctype: str = ""
    body: bytes = b""
    error: str = ""
    seconds: float = 0.0


# ---- the routes ------------------------------------------------------------------------------
def api_routes() -> list[tuple[str, str]]:
    """(method, path template) of every route the daemon serves, from the app itself."""
    from mn_node.api import build_app
    from mn_node.jobs.api import add_routes

    app = build_app(None, add_routes)  # type: ignore[arg-type]  # handlers are never called here
    out: list[tuple[str, str]] = []
    for r in app.router.routes():
        info = r.resource.get_info() if r.resource is not None else {}
        path = str(info.get("formatter") or info.get("path") or "")
        if path and (r.method, path) not in out:
            out.append((r.method, path))
    return out


# ---- generators --------------------------------------------------------------------------------
class Gen:
    def __init__(self, rng: random.Random, token: str, node_name: str, jobs: dict[str, str]) -> None:
        self.rng = rng
        self.token = token
        self.node_name = node_name
        self.jobs = jobs  # role -> job id (completed, cancelled)

    # placeholders -----------------------------------------------------------------------------
    def value_for(self, placeholder: str, valid: bool) -> str:
        r = self.rng
        if placeholder == "job_id":
            good = list(self.jobs.values())
            odd = ["nope", "0" * 200, "x" * 201, "a b", "..", ".", "%", "é", "\u2603" * 3, "job\x00id",
                   "'; DROP", "{job_id}", "-", "a/b", "\u00ff\u00fe", "1e9"]
        else:
            good = [self.node_name, self.node_name.split("@", 1)[0]]
            odd = ["nope", "x" * 5000, "a b", "..", "@", "mn1@", "\u2603", "name\x00", "%ff", "*", ""]
        return r.choice(good) if valid or r.random() < 0.35 else r.choice(odd)

    def path(self, template: str, valid: bool = False) -> str:
        out = template
        for ph in ("job_id", "name"):
            if "{" + ph + "}" in out:
                out = out.replace("{" + ph + "}", urllib.parse.quote(self.value_for(ph, valid), safe=""))
        return out

    def query(self) -> str:
        r = self.rng
        keys = ["count", "limit", "status", "after", "follow", "manifest", "agents", "x", "", "count[]", "%ff"]
        vals = ["", "1", "0", "-1", "abc", "1e3", "99999999999999999999999", "1.5", "true", "null", "\u2603",
                "%", "%zz", "%ff%fe", "0-0", "1-1", "+", "-", "(", "999999999999999-0", "x" * 3000, "1\x00",
                "completed", "running"]
        parts = []
        for _ in range(r.randint(1, 4)):
            k, v = r.choice(keys), r.choice(vals)
            if k == "follow" and v in ("1", "true"):
                v = "0"  # a follow stream on a live job would never end; terminal ones are in raw cases
            parts.append(urllib.parse.quote(k, safe="%[]") + "=" + urllib.parse.quote(v, safe="%+-()"))
        sep = r.choice(["&", "&", ";", "&&"])
        return sep.join(parts)

    def auth(self) -> tuple[list[tuple[bytes, bytes]], bool]:
        """An Authorization header set and whether it is valid."""
        t = self.token.encode()
        choices: list[tuple[list[bytes], bool]] = [
            ([], False), ([b""], False), ([b"Bearer"], False), ([b"Bearer "], False), ([b"Bearer wrong"], False),
            ([b"Basic dXNlcjpwYXNz"], False), ([b"Token " + t], False), ([b"Bearer " + t + b"x"], False),
            ([b"Bearer " + t[:-1]], False), ([b"Bearer " + b"A" * 5000], False), ([b"Bearer  " + t], True),
            ([b"bearer " + t], True), ([b"Bearer " + t + b" "], True), ([b"Bearer " + t], True),
            ([b"BEARER " + t], True), ([b"Bearer " + t.lower()], False), ([b"Bearer\t" + t], False),
        ]
        vals, ok = self.rng.choice(choices)
        return [(b"Authorization", v) for v in vals], ok

    # bodies -------------------------------------------------------------------------------------
    def small_manifest(self) -> dict[str, Any]:
        from mn_node.jobs.blueprints import generate

        return generate("prime_sweep_scale", {"workers": 2, "chunk_size": 50, "start": 1000})

    def weird(self, depth: int = 0) -> Any:
        r = self.rng
        pool: list[Any] = [None, True, False, "", "x" * 300, -1, 0, 1.5, "\u2603", "\x00", [], {}, [1, [2]],
                           {"a": None}, float("inf"), "  7 ", "0x10"]  # no big valid ints: no CPU hog jobs
        if depth < 2 and r.random() < 0.2:
            return {r.choice(["a", "nodes", "config", ""]): self.weird(depth + 1)}
        return r.choice(pool)

    def mutate(self, obj: Any, steps: int) -> Any:
        """Change a few leaves or keys of a JSON structure (never to a big valid integer)."""
        obj = json.loads(json.dumps(obj))
        for _ in range(steps):
            path: list[Any] = []
            cur = obj
            while isinstance(cur, (dict, list)) and cur and self.rng.random() < 0.75:
                k = self.rng.choice(list(cur.keys())) if isinstance(cur, dict) else self.rng.randrange(len(cur))
                path.append(k)
                cur = cur[k]
            if not path:
                obj = self.weird()
                continue
            parent = obj
            for k in path[:-1]:
                parent = parent[k]
            op = self.rng.random()
            if op < 0.6:
                parent[path[-1]] = self.weird()
            elif op < 0.8 and isinstance(parent, dict):
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[self.rng.choice(["extra", "", "node_id", "\u2603"])] = self.weird()
            else:
                parent.append(self.weird())
        return obj

    def json_body(self) -> tuple[bytes, str]:
        """A submit body and whether it could be valid ("any") or is surely invalid ("4xx")."""
        r = self.rng
        k = r.randrange(16)
        if k == 0:
            return r.choice([b"", b"{", b"{\"blueprint\":", b"nul", b"{'a': 1}", b"[1,]", b"{\"a\" 1}",
                             b"\"unterminated", b"{}}", b"\xef\xbb\xbf{}", b"NaN", b"--", b"{\"a\":01}"]), "4xx"
        if k == 1:
            depth = r.choice([50, 1000, 5000, 100_000, 500_000])
            opener, closer = r.choice([(b"[", b"]"), (b"{\"a\":", b"}")])
            return opener * depth + b"1" + closer * depth, "4xx"
        if k == 2:
            return json.dumps(r.choice([[], "str", 12, None, True, 1.5, [{"blueprint": "prime_sweep_scale"}]])
                              ).encode(), "4xx"
        if k == 3:
            return json.dumps({"blueprint": self.weird()}).encode(), "4xx"
        if k in (4, 5):
            params: dict[str, Any] = {}
            for name in r.sample(["workers", "start", "chunk_size", "end", "bogus"], r.randint(1, 3)):
                params[name] = r.choice([self.weird(), self.weird(), r.choice([10**30, -(10**30), "5000001"]),
                                         r.choice([1, 2, 3, "2"]) if name == "workers" else r.choice([5, 50, "50"])])
            body = {"blueprint": "prime_sweep_scale", "params": params}
            if r.random() < 0.2:
                body["params"] = self.weird()
            return json.dumps(body).encode(), "any"
        if k in (6, 7, 8):
            return json.dumps({"manifest": self.mutate(self.small_manifest(), r.randint(1, 4))}).encode(), "any"
        if k == 9:
            return json.dumps({"manifest": self.weird()}).encode(), "4xx"
        if k == 10:
            return b'{"blueprint": "prime_sweep_scale", "params": {"workers": NaN, "start": Infinity}}', "4xx"
        if k == 11:
            return b'{"blueprint": 1, "blueprint": "prime_sweep_scale", "params": {"workers": 2, "chunk_size": 50}}', \
                "any"
        if k == 12:
            return json.dumps({"blueprint": "prime_sweep_scale", "params": {"workers": 2, "chunk_size": 50},
                               "extra": self.weird()}).encode(), "any"
        if k == 13:
            return b"\xff\xfe\x00{" + bytes(r.randrange(256) for _ in range(40)), "4xx"
        if k == 14:
            return json.dumps({"blueprint": "prime_sweep_scale", "params": {"workers": 2, "chunk_size": 50},
                               "x": "y" * 1_000_000}).encode(), "any"
        return json.dumps({"nothing": "here"}).encode(), "4xx"

    def content_type(self) -> bytes | None:
        return self.rng.choice([None, b"application/json", b"text/plain", b"application/json; charset=bogus",
                                b"application/json; charset=utf-16", b"multipart/form-data",
                                b"application/x-www-form-urlencoded", b"", b";;;",
                                b"application/json; charset=latin-1"])


# ---- building cases --------------------------------------------------------------------------------
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT", "FOO", "get"]


# state-changing routes whose body is optional (an empty one is valid); any body they get must
# still be a JSON object of their own fields, so junk is refused as on the submit routes
OPTIONAL_BODY = ("/prune", "/drain", "/undrain", "/pause", "/resume")


def random_cases(g: Gen, method: str, template: str, n: int) -> list[Case]:
    route = f"{method} {template}"
    state_changing = method not in ("GET", "HEAD", "OPTIONS")
    out: list[Case] = []
    for _ in range(n):
        r = g.rng
        kind = r.choice(["method", "auth", "query", "body", "body", "ctype", "nonutf8", "path"])
        m = method
        path = g.path(template, valid=kind not in ("path", "method"))
        headers, auth_ok = g.auth() if kind == "auth" else ([(b"Authorization", b"Bearer " + g.token.encode())], True)
        body = b""
        expect = "any"
        if kind == "method":
            m = r.choice(METHODS)
            if r.random() < 0.5:
                headers, auth_ok = [], False
            if m in ("CONNECT", "get"):
                expect = "4xx"  # CONNECT has no route; lower-case is another (unknown) method
        elif kind == "query":
            path += "?" + g.query()
        elif kind == "path":
            path = r.choice([path, path + "/", path + "//", path.replace("/api/v1", "/api/v2"),
                             path + "/..", "/api/v1/" + "x" * 3000, path.upper(), path + "%00", path + "%2f%2e%2e"])
        elif kind in ("body", "ctype", "nonutf8"):
            if state_changing and "cancel" not in template:
                body, expect = g.json_body()
            else:
                body = g.json_body()[0]
            if kind == "nonutf8":
                body = b'{"blueprint": "prime_\xff\xfe", "params": {"a": "\xc3\x28"}}'
                expect = "4xx" if state_changing and "cancel" not in template else "any"
            if body == b"" and any(t in template for t in OPTIONAL_BODY):
                expect = "any"  # no body means "no options" on these routes
            ct = g.content_type() if kind == "ctype" else b"application/json"
            if ct is not None:
                headers.append((b"Content-Type", ct))
        if state_changing and m == method and not auth_ok:
            expect = "4xx"
        if kind == "body" and r.random() < 0.04:
            body = b"{" + b" " * HUGE + b"}"  # over the limit: 413
            expect = "4xx" if state_changing and "cancel" not in template else "any"
        out.append(Case(route, kind, m, path.encode(), headers, body, expect=expect,
                        parser=m in ("CONNECT", "FOO", "get")))
    return out


def raw_cases(g: Gen, method: str, template: str) -> list[Case]:
    """The header-level catalogue for one route, over raw sockets."""
    route = f"{method} {template}"
    path = g.path(template, valid=True).encode()
    m = method.encode()
    auth = b"Authorization: Bearer " + g.token.encode() + b"\r\n"
    host = b"Host: fuzz\r\n"
    body = json.dumps({"blueprint": "prime_sweep_scale", "params": {"workers": 2, "chunk_size": 50}}).encode()
    state_changing = method not in ("GET", "HEAD", "OPTIONS")
    ok_if_valid = "any"
    out: list[Case] = []

    def add(kind: str, raw: bytes, expect: str = "4xx", parser: bool = True, half_close: bool = False,
            incomplete: bool = False) -> None:
        out.append(Case(route, kind, method, path, raw=raw, expect=expect, parser=parser,
                        half_close=half_close, incomplete=incomplete))

    line = m + b" " + path + b" HTTP/1.1\r\n"
    # request line
    add("garbage", bytes(g.rng.randrange(1, 256) for _ in range(64)) + b"\r\n\r\n")
    add("no-version", m + b" " + path + b"\r\n\r\n", expect="any")  # HTTP/0.9 style: aiohttp answers it
    add("bad-version", m + b" " + path + b" HTTP/9.9\r\n" + host + b"\r\n")
    add("bad-proto", m + b" " + path + b" HTXP/1.1\r\n" + host + b"\r\n")
    add("extra-token", m + b" " + path + b" HTTP/1.1 extra\r\n" + host + b"\r\n")
    add("space-in-target", m + b" " + path + b" x HTTP/1.1\r\n" + host + b"\r\n")
    add("nonutf8-target", m + b" " + path + b"\xff\xfe%ff HTTP/1.1\r\n" + host + auth + b"\r\n", expect="any",
        parser=True)
    add("ctl-in-target", m + b" " + path + b"\x01\x7f HTTP/1.1\r\n" + host + b"\r\n")
    add("long-target", m + b" " + path + b"?" + b"a" * 20_000 + b" HTTP/1.1\r\n" + host + b"\r\n")
    add("absolute-form", m + b" http://evil.example" + path + b" HTTP/1.1\r\n" + host + auth + b"\r\n",
        expect="any", parser=True)
    add("asterisk-form", m + b" * HTTP/1.1\r\n" + host + b"\r\n", expect="4xx", parser=True)
    # headers
    add("no-colon", line + host + b"NoColonHere\r\n\r\n")
    add("space-in-name", line + host + b"Bad Name: x\r\n\r\n")
    add("nul-in-value", line + host + b"X-A: a\x00b\r\n\r\n")
    add("obs-fold", line + host + b"X-A: a\r\n  folded\r\n\r\n")
    add("huge-header", line + host + b"X-A: " + b"a" * 70_000 + b"\r\n\r\n")
    add("many-headers", line + host + b"".join(b"X-%d: v\r\n" % i for i in range(300)) + b"\r\n", expect="any")
    add("nonutf8-header", line + host + auth + b"X-A: \xff\xfe\xc3\x28\r\n\r\n", expect="any")
    add("no-host", line + auth + b"\r\n", expect="any")
    add("http10", m + b" " + path + b" HTTP/1.0\r\n" + auth + b"\r\n", expect="any")
    add("lf-only", m + b" " + path + b" HTTP/1.1\n" + host.replace(b"\r\n", b"\n") + b"\n", expect="any")
    add("expect-bogus", line + host + auth + b"Expect: teapot\r\nContent-Length: 2\r\n\r\n{}")
    add("expect-100", line + host + auth + b"Expect: 100-continue\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body, expect="any", parser=False)
    # authorization
    bad_auth = b"Authorization: Bearer wrong\r\n"
    dup_expect = "4xx" if state_changing else "any"
    add("auth-dup-wrong-first", line + host + bad_auth + auth + b"Content-Length: 2\r\n\r\n{}",
        expect=dup_expect, parser=False)
    add("auth-dup-right-first", line + host + auth + bad_auth + b"Content-Length: 2\r\n\r\n{}",
        expect=ok_if_valid, parser=False)
    add("auth-nonutf8", line + host + b"Authorization: Bearer \xff\xfe\x80abc\r\nContent-Length: 2\r\n\r\n{}",
        expect=dup_expect, parser=False)
    add("auth-latin1", line + host + b"Authorization: B\xe9arer x\r\nContent-Length: 2\r\n\r\n{}",
        expect=dup_expect, parser=False)
    add("auth-empty", line + host + b"Authorization:\r\nContent-Length: 2\r\n\r\n{}", expect=dup_expect,
        parser=False)
    # Content-Length / Transfer-Encoding
    ct = b"Content-Type: application/json\r\n"
    add("cl-nonnumeric", line + host + auth + ct + b"Content-Length: abc\r\n\r\n" + body)
    add("cl-negative", line + host + auth + ct + b"Content-Length: -1\r\n\r\n" + body)
    add("cl-plus", line + host + auth + ct + b"Content-Length: +5\r\n\r\n" + body)
    add("cl-huge", line + host + auth + ct + b"Content-Length: 99999999999999999999999\r\n\r\n" + body)
    add("cl-duplicate", line + host + auth + ct + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}}")
    add("cl-and-te", line + host + auth + ct + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n")
    add("te-bad-size", line + host + auth + ct + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
    add("te-unknown", line + host + auth + ct + b"Transfer-Encoding: gzip\r\n\r\n{}")
    add("te-ok", line + host + auth + ct + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body) + body +
        b"\r\n0\r\n\r\n", expect="any", parser=False)
    add("te-truncated", line + host + auth + ct + b"Transfer-Encoding: chunked\r\n\r\n40\r\n{}",
        expect="any", parser=False, half_close=True, incomplete=True)
    add("cl-longer-than-body", line + host + auth + ct + b"Content-Length: 500\r\n\r\n" + body,
        expect="any", parser=False, half_close=True, incomplete=True)
    add("cl-shorter-than-body", line + host + auth + ct + b"Content-Length: 5\r\n\r\n" + body,
        expect="4xx" if state_changing and "cancel" not in template else "any")  # + a garbage 2nd request
    add("cl-over-limit", line + host + auth + ct + b"Content-Length: %d\r\n\r\n" % HUGE + b"{" * 1024,
        expect="4xx" if state_changing and "cancel" not in template else "any", parser=False,
        half_close=True, incomplete=True)
    add("ct-nonutf8", line + host + auth + b"Content-Type: application/json; charset=\xff\xfe\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body, expect="any", parser=False)
    add("ct-bogus-charset", line + host + auth + b"Content-Type: application/json; charset=x-nope\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body,
        expect="4xx" if state_changing and "cancel" not in template else "any", parser=False)
    # follow streams on terminal jobs end by themselves; they must still be well-formed
    if "events" in template and "{job_id}" in template:
        add("follow-terminal", m + b" " + path + b"?follow=1 HTTP/1.1\r\n" + host + b"\r\n", expect="any",
            parser=False)
    return out


# ---- sending and judging ---------------------------------------------------------------------------
def send(host: str, port: int, case: Case) -> Answer:
    t0 = time.monotonic()
    try:
        if case.raw is not None:
            return _send_raw(host, port, case, t0)
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
        try:
            conn.putrequest(case.method, case.target.decode("latin-1"), skip_accept_encoding=True)
            for k, v in case.headers:
                conn.putheader(k.decode(), v)
            if case.body or case.method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(case.body)))
            try:
                conn.endheaders(case.body or None)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused before the body was read: the answer may still be waiting for us
            resp = conn.getresponse()
            data = resp.read() if case.method != "HEAD" else b""
            return Answer(resp.status, resp.getheader("Content-Type", ""), data, seconds=time.monotonic() - t0)
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as e:
        return Answer(None, error=f"{type(e).__name__}: {e}"[:200], seconds=time.monotonic() - t0)


def _send_raw(host: str, port: int, case: Case, t0: float) -> Answer:
    assert case.raw is not None
    with socket.create_connection((host, port), timeout=TIMEOUT) as s:
        try:
            s.sendall(case.raw)
            if case.half_close:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = http.client.HTTPResponse(s, method=case.method)
        resp.begin()
        data = b""
        if case.method != "HEAD":
            try:
                data = resp.read()
            except http.client.IncompleteRead as e:
                data = e.partial
        return Answer(resp.status, resp.getheader("Content-Type", ""), data, seconds=time.monotonic() - t0)


def judge(case: Case, a: Answer) -> str | None:
    """None if the answer is acceptable, else why not."""
    if a.status is None:
        if case.incomplete:
            return None
        return f"no answer ({a.error})"
    if a.status >= 500:
        return f"{a.status}: {a.body[:200]!r}"
    if 200 <= a.status < 300:
        if case.expect == "4xx":
            return f"accepted ({a.status}) a request that must be refused: {a.body[:120]!r}"
        return None
    if not 400 <= a.status < 500:
        return f"unexpected status {a.status}"
    if case.method == "HEAD" or case.method.upper() == "HEAD":
        return None
    if "json" in a.ctype:
        try:
            doc = json.loads(a.body)
        except ValueError:
            return f"{a.status} with a body that is not JSON: {a.body[:120]!r}"
        if not isinstance(doc, dict) or not str(doc.get("error") or "").strip():
            return f"{a.status} without a reason: {a.body[:120]!r}"
        return None
    if (case.parser or case.incomplete) and a.body.strip():
        return None  # aiohttp's HTTP parser refused it before any route: plain-text reason
    return f"{a.status} with a non-JSON body ({a.ctype}): {a.body[:120]!r}"


# ---- the run --------------------------------------------------------------------------------------
def fuzz_http(host: str, port: int, token: str, node_name: str, jobs: dict[str, str], seed: int,
              per_route: int, alive: Any = None) -> dict[str, Any]:
    """Fuzz every route; ``alive()`` (optional) says whether the daemon process still runs."""
    rng = random.Random(seed)
    g = Gen(rng, token, node_name, jobs)
    routes = api_routes()
    per: dict[str, dict[str, Any]] = {}
    bad: list[str] = []
    total = 0
    t0 = time.monotonic()
    for method, template in routes:
        cases = raw_cases(g, method, template) + random_cases(g, method, template, per_route)
        stats: Counter[str] = Counter()
        kinds: Counter[str] = Counter()
        for case in cases:
            a = send(host, port, case)
            total += 1
            kinds["raw" if case.raw is not None else "client"] += 1
            stats[str(a.status) if a.status is not None else "closed"] += 1
            why = judge(case, a)
            if why is not None:
                bad.append(f"{case.describe()} -> {why}")
        health = send(host, port, Case("health", "health", "GET", b"/api/v1/health"))
        node_ok = health.status == 200 and (alive is None or alive())
        if not node_ok:
            bad.append(f"after {method} {template}: node not healthy: status {health.status} {health.body[:200]!r} "
                       f"{health.error}")
        per[f"{method} {template}"] = {"requests": len(cases), "raw": kinds["raw"], "client": kinds["client"],
                                       "status": dict(sorted(stats.items()))}
    return {"seed": seed, "routes": len(routes), "requests": total, "seconds": round(time.monotonic() - t0, 1),
            "per_route": per, "bad": bad}


def fuzz_http_standalone(seed: int = 1, per_route: int = 60) -> dict[str, Any]:
    """Start a real Redis and one real mn-node on loopback, fuzz it, stop both."""
    from mn_node.config import api_token
    from tests.support.cluster import Cluster
    from tests.support.redis import RedisServer
    from tests.support.wait import wait_until

    srv = RedisServer(appendonly=False).start()
    cluster = Cluster(redis_url=srv.url, size=1, extra_env={"MIRROR_NEURON_EXECUTOR_CAPACITY": "1"})
    try:
        node = cluster.start(1)
        wait_until(lambda: cluster.get_status(1, "/api/v1/health")[0] == 200, 30,
                   f"{node.name} to be healthy (log: {node.log})")
        cluster.wait_leader(20)
        token = api_token(cluster.cookie.encode())
        small = {"blueprint": "prime_sweep_scale", "params": {"workers": 2, "chunk_size": 50}}
        done = cluster.post(1, "/api/v1/jobs", small)["job_id"]
        wait_until(lambda: cluster.get(1, f"/api/v1/jobs/{done}")["status"] == "completed", 60,
                   f"job {done} to complete")
        cancelled = cluster.post(1, "/api/v1/jobs", {**small, "params": {"workers": 3, "chunk_size": 5000}})["job_id"]
        status, _ = cluster.post_status(1, f"/api/v1/jobs/{cancelled}/cancel")
        if status != 200:  # it may have completed already: either way it is terminal
            wait_until(lambda: cluster.get(1, f"/api/v1/jobs/{cancelled}")["status"] == "completed", 60,
                       f"job {cancelled} to end")
        out = fuzz_http(node.host, node.api_port, token, node.name, {"completed": done, "cancelled": cancelled},
                        seed, per_route, alive=node.alive)
        failures = [ln for ln in node.log_text().splitlines() if "API handler failed" in ln]
        out["handler_failures_logged"] = len(failures)
        out["bad"].extend(f"node log: {ln[:300]}" for ln in failures[:20])
        out["node_alive"] = node.alive()
        if not node.alive():
            out["bad"].append(f"node exited with {node.proc.returncode if node.proc else None}")
        out["jobs_created"] = len(cluster.get(1, "/api/v1/jobs?limit=1000")["jobs"])
        return out
    finally:
        cluster.cleanup()
        srv.cleanup()
