"""What the tests' Python servers (backend.py, fake_redis.py, slow_proxy.py) share: their
command line (--port, --host and their own options), serving until the test that started
them goes away, and a quiet exit on ^C. Stdlib only, asyncio."""

import argparse
import asyncio
import os
import sys


async def _exit_with_parent(parent):
    # The test is gone when this process is reparented; nothing else would stop the server.
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    os._exit(0)


def serve(name, make_handler, add_arguments=None, backlog=1024):
    """Serves make_handler(args) on --host:--port until the parent process goes away.

    add_arguments(parser) adds the server's own options; args is the parsed command line.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args()

    async def main():
        server = await asyncio.start_server(
            make_handler(args), args.host, args.port, backlog=backlog, reuse_address=True)
        asyncio.ensure_future(_exit_with_parent(os.getppid()))
        print("%s listening on %s:%d" % (name, args.host, args.port), flush=True)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
