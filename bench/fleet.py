#!/usr/bin/env python3
"""N concurrent requests for one missing key, round-robin over several nginx (a fleet);
prints JSON: 200s, the filler's node, and when the other nodes' clients were answered after
the filler's answer (which ends after its store), p50/p99 in ms.

    fleet.py HOST PATH N PORT [PORT ...]
"""
import asyncio
import json
import sys
import time


async def one(host, port, node, path, results):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    end = time.monotonic()
    writer.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status = head.split(" ", 2)[1] if " " in head else "?"
    cache = ""
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "x-stale-cache":
            cache = value.strip()
    results.append({"node": node, "end": end, "status": status, "cache": cache})


def pct(p, values):
    values = sorted(values)
    if not values:
        return None
    return values[min(len(values) - 1, int(p / 100 * (len(values) - 1) + 0.999))]


async def main():
    host, path, n, ports = sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(p) for p in sys.argv[4:]]
    results = []
    await asyncio.gather(*(one(host, ports[i % len(ports)], i % len(ports), path, results)
                           for i in range(n)))
    fillers = [r for r in results if r["cache"] == "MISS"]
    after = []
    if fillers:
        first = min(f["end"] for f in fillers)
        nodes = {f["node"] for f in fillers}
        after = [(r["end"] - first) * 1000 for r in results if r["node"] not in nodes]
    print(json.dumps({
        "ok": sum(r["status"] == "200" for r in results),
        "misses": len(fillers),
        "after_p50_ms": pct(50, after),
        "after_p99_ms": pct(99, after),
    }))


asyncio.run(main())
