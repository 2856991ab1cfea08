#!/usr/bin/env python3
"""A small RESP2 server for tests that need error replies a real redis-server does not give
on demand (-LOADING, -BUSY, -MASTERDOWN, -NOSCRIPT): stdlib only, asyncio.

Usage: fake_redis.py --port PORT [--host 127.0.0.1]

It keeps string keys in memory with their expiry and answers PING, GET, SET (with EX),
SETEX, EXPIRE, TTL, PERSIST, DEL, EXISTS, DBSIZE, FLUSHALL, EVAL and EVALSHA (both answer
integer 0) like Redis does. Control commands (never refused):
    FAKE.FAIL <COMMAND|*> <error text> [N]  refuse COMMAND (or every command) with
                                         "-<text>" (only its next N calls, given N)
    FAKE.RESET                           drop the keys, the failures and the counts
    FAKE.CALLS <COMMAND>                 how many times COMMAND was received
    FAKE.GAPS <COMMAND>                  the milliseconds between its calls ("10 21 40")
CLUSTER SLOTS answers one range, every slot on this server (for a cluster upstream of it).
The server exits when its parent (the test) goes away.
"""

import asyncio
import time

import test_server


class State:
    def __init__(self):
        self.reset()

    def reset(self):
        self.data = {}      # key -> (value, expires_at or None)
        self.fail = {}      # COMMAND or "*" -> [error text, calls left or None]
        self.calls = {}     # COMMAND -> count
        self.times = {}     # COMMAND -> the monotonic times of its calls

    def live(self, key):
        entry = self.data.get(key)
        if entry and entry[1] is not None and entry[1] <= time.monotonic():
            del self.data[key]
            return None
        return entry


STATE = State()
LISTEN = ("127.0.0.1", 0)   # this server's address, for CLUSTER SLOTS


def bulk(b):
    return b"$%d\r\n%s\r\n" % (len(b), b) if b is not None else b"$-1\r\n"


def integer(n):
    return b":%d\r\n" % n


def error(text):
    return b"-" + text + b"\r\n"


def run(args):
    name = args[0].upper()
    st = STATE
    if name == b"FAKE.FAIL":
        st.fail[args[1].upper()] = [args[2], int(args[3]) if len(args) > 3 else None]
        return b"+OK\r\n"
    if name == b"FAKE.GAPS":
        t = st.times.get(args[1].upper(), [])
        return bulk(" ".join(str(round((b - a) * 1000)) for a, b in zip(t, t[1:])).encode())
    if name == b"FAKE.RESET":
        st.reset()
        return b"+OK\r\n"
    if name == b"FAKE.CALLS":
        return integer(st.calls.get(args[1].upper(), 0))
    st.calls[name] = st.calls.get(name, 0) + 1
    st.times.setdefault(name, []).append(time.monotonic())
    fail = st.fail.get(name, st.fail.get(b"*"))
    if fail is not None and fail[1] != 0:
        if fail[1] is not None:
            fail[1] -= 1
        return error(fail[0])
    if name == b"PING":
        return b"+PONG\r\n"
    if name == b"GET":
        entry = st.live(args[1])
        return bulk(entry[0] if entry else None)
    if name == b"SET":
        expires = None
        if len(args) >= 5 and args[3].upper() == b"EX":
            expires = time.monotonic() + int(args[4])
        st.data[args[1]] = (args[2], expires)
        return b"+OK\r\n"
    if name == b"SETEX":
        st.data[args[1]] = (args[3], time.monotonic() + int(args[2]))
        return b"+OK\r\n"
    if name == b"EXPIRE":
        entry = st.live(args[1])
        if not entry:
            return integer(0)
        st.data[args[1]] = (entry[0], time.monotonic() + int(args[2]))
        return integer(1)
    if name == b"TTL":
        entry = st.live(args[1])
        if not entry:
            return integer(-2)
        if entry[1] is None:
            return integer(-1)
        return integer(max(0, round(entry[1] - time.monotonic())))
    if name == b"PERSIST":
        entry = st.live(args[1])
        if not entry or entry[1] is None:
            return integer(0)
        st.data[args[1]] = (entry[0], None)
        return integer(1)
    if name in (b"DEL", b"EXISTS"):
        n = sum(1 for k in args[1:] if st.live(k))
        if name == b"DEL":
            for k in args[1:]:
                st.data.pop(k, None)
        return integer(n)
    if name == b"DBSIZE":
        return integer(sum(1 for k in list(st.data) if st.live(k)))
    if name == b"FLUSHALL":
        st.data.clear()
        return b"+OK\r\n"
    if name in (b"EVAL", b"EVALSHA"):
        return integer(0)
    if name == b"CLUSTER" and len(args) > 1 and args[1].upper() == b"SLOTS":
        node = b"*2\r\n" + bulk(LISTEN[0].encode()) + integer(LISTEN[1])
        return b"*1\r\n*3\r\n" + integer(0) + integer(16383) + node
    return error(b"ERR unknown command '" + name + b"'")


async def read_command(reader):
    line = await reader.readline()
    if not line:
        return None
    if not line.startswith(b"*"):
        raise ValueError("inline commands are not supported")
    args = []
    for _ in range(int(line[1:])):
        head = await reader.readline()
        n = int(head[1:])
        args.append((await reader.readexactly(n + 2))[:-2])
    return args


async def serve(reader, writer):
    try:
        while True:
            args = await read_command(reader)
            if args is None:
                break
            writer.write(run(args))
            await writer.drain()
    except (ConnectionError, ValueError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def listen_at(args):
    global LISTEN
    LISTEN = (args.host, args.port)
    return serve


if __name__ == "__main__":
    test_server.serve("fake redis", listen_at)
