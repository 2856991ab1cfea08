#!/usr/bin/env python3
"""A TCP proxy that holds what clients send for a while: for tests whose point is a request
reaching its server late (a store landing after an invalidation). Stdlib only, asyncio.

Usage: slow_proxy.py --port PORT --to PORT [--delay SECONDS]

Each chunk a client sends is forwarded to 127.0.0.1:<to> DELAY seconds after it arrived,
in order; the server's answers go back at once. The proxy exits when its parent (the test)
goes away.
"""

import argparse
import asyncio
import os
import sys


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


async def serve(client_r, client_w, to, delay):
    try:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", to)
    except OSError:
        client_w.close()
        return
    await asyncio.gather(pump_late(client_r, server_w, delay), pump(server_r, client_w))
    client_w.close()


async def watch_parent(parent):
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    os._exit(0)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--to", type=int, required=True)
    p.add_argument("--delay", type=float, default=1.0)
    a = p.parse_args()
    server = await asyncio.start_server(
        lambda r, w: serve(r, w, a.to, a.delay), "127.0.0.1", a.port, backlog=1024)
    asyncio.ensure_future(watch_parent(os.getppid()))
    print("slow proxy on %d to %d, %.2f s" % (a.port, a.to, a.delay), flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
