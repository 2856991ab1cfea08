#!/usr/bin/env python3
"""Test backend for the stale-cache integration tests (stdlib only, asyncio).

Usage: backend.py --port PORT [--host 127.0.0.1]

Every request answers 200 with the body
    "backend <METHOD> <path?query> hit <N>\n"
where N counts the hits of that path (query string ignored for the count).
Behaviour can be changed per request with headers (X-Backend-Delay,
X-Backend-Status, X-Backend-Body, X-Backend-Body-Size, X-Backend-Body-Binary,
X-Backend-Header: "Name: value") or per path with the control API under
/__backend/ (config, reset, hits, log).  See t/README.md.
"""

import asyncio
import json
import time

import test_server
from urllib.parse import parse_qs, urlsplit

PATTERN = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-\n"  # 64 bytes

REASONS = {200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently",
           302: "Found", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden",
           404: "Not Found", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout"}


class State:
    def __init__(self):
        self.reset()

    def reset(self):
        self.total = 0
        self.hits = {}      # key (path, or path?query) -> count
        self.config = {}    # path or path?query -> dict
        self.log = []       # one dict per hit


STATE = State()


def pattern_body(size):
    reps = size // len(PATTERN) + 1
    return (PATTERN * reps)[:size]


def matches(entry_path, want):
    """A query-less `want` matches the path part; otherwise exact path?query."""
    if "?" in want:
        return entry_path == want
    return entry_path.split("?", 1)[0] == want


def hits_for(want):
    if want is None:
        return STATE.total
    return sum(1 for e in STATE.log if matches(e["path"], want))


async def read_request(reader):
    line = await reader.readline()
    if not line:
        return None
    line = line.decode("latin-1").rstrip("\r\n")
    if not line:  # tolerate a stray empty line between requests
        line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
        if not line:
            return None
    parts = line.split(" ")
    if len(parts) != 3:
        raise ValueError("bad request line %r" % line)
    method, target, version = parts
    headers = []
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    hmap = {}
    for k, v in headers:
        k = k.lower()
        hmap[k] = hmap[k] + ", " + v if k in hmap else v
    body = b""
    if "chunked" in hmap.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunks.append(await reader.readexactly(size))
            await reader.readline()
        body = b"".join(chunks)
    elif "content-length" in hmap:
        body = await reader.readexactly(int(hmap["content-length"]))
    return method, target, version, headers, hmap, body


def control(method, target):
    u = urlsplit(target)
    q = {k: v[-1] for k, v in parse_qs(u.query, keep_blank_values=True).items()}
    qa = parse_qs(u.query, keep_blank_values=True)
    what = u.path[len("/__backend/"):]
    if what == "reset":
        STATE.reset()
        return 200, [], b"ok\n"
    if what == "config":
        path = q.get("path")
        if not path:
            return 400, [], b"path required\n"
        cfg = STATE.config.setdefault(path, {})
        for k in ("delay", "status", "body", "body_size", "body_binary"):
            if k in q:
                cfg[k] = q[k]
        if "header" in qa:
            cfg["headers"] = [h.split(":", 1) for h in qa["header"] if ":" in h]
        if q.get("clear"):
            STATE.config.pop(path, None)
        return 200, [], b"ok\n"
    if what == "hits":
        return 200, [], b"%d\n" % hits_for(q.get("path"))
    if what == "log":
        want = q.get("path")
        out = "".join(json.dumps(e) + "\n" for e in STATE.log
                      if want is None or matches(e["path"], want))
        return 200, [("Content-Type", "application/x-ndjson")], out.encode()
    return 404, [], b"unknown control endpoint\n"


def find_config(target):
    path = target.split("?", 1)[0]
    return STATE.config.get(target) or STATE.config.get(path) or {}


async def serve_hit(method, target, version, headers, hmap, body, conn=None):
    path = target.split("?", 1)[0]
    STATE.total += 1
    n = STATE.hits[path] = STATE.hits.get(path, 0) + 1
    STATE.log.append({
        "method": method, "path": target, "version": version,
        "headers": hmap, "header_list": headers,
        "body": body.decode("latin-1"), "hit": n, "seq": STATE.total,
        "time": time.time(), "conn": conn,
    })
    cfg = find_config(target)

    def opt(hname, key):
        v = hmap.get("x-backend-" + hname)
        return v if v is not None else cfg.get(key)

    delay = opt("delay", "delay")
    if delay:
        await asyncio.sleep(float(delay))
    status = int(opt("status", "status") or 200)
    extra = list(cfg.get("headers", []))
    if "x-backend-header" in hmap:
        for h in (x for n_, x in headers if n_.lower() == "x-backend-header"):
            if ":" in h:
                extra.append(h.split(":", 1))
    if opt("body-binary", "body_binary"):
        rbody = bytes(range(256))
    elif opt("body-size", "body_size") is not None:
        rbody = pattern_body(int(opt("body-size", "body_size")))
    elif opt("body", "body") is not None:
        rbody = opt("body", "body").encode("latin-1")
    else:
        rbody = ("backend %s %s hit %d\n" % (method, target, n)).encode("latin-1")
    rheaders = [("Content-Type", "text/plain"), ("X-Backend-Hit", str(n))]
    rheaders += [(k.strip(), v.strip()) for k, v in extra]
    return status, rheaders, rbody


async def handle(reader, writer):
    try:
        while True:
            req = await read_request(reader)
            if req is None:
                break
            method, target, version, headers, hmap, body = req
            if target.startswith("/__backend/"):
                status, rheaders, rbody = control(method, target)
            else:
                # the client's port tells connections apart (keep-alive tests)
                peer = writer.get_extra_info("peername")
                status, rheaders, rbody = await serve_hit(*req, conn=peer and peer[1])
            conn = hmap.get("connection", "").lower()
            keep = (version == "HTTP/1.1" and "close" not in conn) or \
                   (version == "HTTP/1.0" and "keep-alive" in conn)
            lines = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Unknown"))]
            lines += ["%s: %s" % kv for kv in rheaders]
            no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
            if status not in (204, 304):
                lines.append("Content-Length: %d" % len(rbody))
            lines.append("Connection: %s" % ("keep-alive" if keep else "close"))
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            writer.write(head if no_body else head + rbody)
            await writer.drain()
            if not keep:
                break
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    except Exception as e:  # malformed request: answer 400 and close
        try:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(str(e)), str(e).encode()))
            await writer.drain()
        except Exception:
            pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


if __name__ == "__main__":
    test_server.serve("backend", lambda args: handle, backlog=4096)
