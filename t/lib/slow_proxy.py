#!/usr/bin/env python3
"""A TCP proxy that holds what clients send for a while: for tests whose point is a request
reaching its server late (a store landing after an invalidation). Stdlib only, asyncio.

Usage: slow_proxy.py --port PORT --to PORT [--delay SECONDS] [--connect-late]

Each chunk a client sends is forwarded to 127.0.0.1:<to> DELAY seconds after it arrived,
in order; the server's answers go back at once. With --connect-late, each client waits
DELAY seconds before the proxy connects it to the server instead, and then goes through at
once: a server that is stopped fails the client only after DELAY (a fetch that fails late).
The proxy exits when its parent (the test) goes away.
"""

import asyncio

import test_server


async def pump_late(reader, writer, delay):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def send():
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if data is None:
                if writer.can_write_eof():
                    writer.write_eof()
                else:
                    writer.close()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + delay, data or None))
            if not data:
                break
        await sender
    except (ConnectionError, asyncio.CancelledError):
        sender.cancel()


async def pump(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(client_r, client_w, to, delay, connect_late):
    if connect_late:
        await asyncio.sleep(delay)
        delay = 0.0
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", to)
    except OSError:
        client_w.close()
        return
    await asyncio.gather(pump_late(client_r, server_w, delay), pump(server_r, client_w))
    client_w.close()


def options(parser):
    parser.add_argument("--to", type=int, required=True)
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--connect-late", action="store_true")


if __name__ == "__main__":
    test_server.serve(
        "slow proxy",
        lambda a: lambda r, w: serve(r, w, a.to, a.delay, a.connect_late),
        add_arguments=options)
