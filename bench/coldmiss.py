#!/usr/bin/env python3
"""N concurrent requests for one missing key; prints JSON with latencies and wake-up delays.

Each request runs on its own connection. The wake-up delay of a waiter is the time between the
filling request's response (X-Stale-Cache: MISS) and the waiter's response.
"""
import asyncio
import json
import sys
import time


async def one(host, port, path, results):
    start = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    end = time.monotonic()
    writer.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status = head.split(" ", 2)[1] if " " in head else "?"
    cache, wake = "", None
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "x-stale-cache":
            cache = value.strip()
        elif name.lower() == "x-wake-delay":
            wake = float(value.strip())
    results.append({"start": start, "end": end, "status": status, "cache": cache, "wake": wake})


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


async def main():
    host, port, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    results = []
    await asyncio.gather(*(one(host, port, path, results) for _ in range(n)))
    fills = [r for r in results if r["cache"] == "MISS"]
    t0 = min(r["start"] for r in results)
    latencies = [(r["end"] - r["start"]) * 1000 for r in results]
    fill_end = min(r["end"] for r in fills) if fills else None
    wakeups = [
        (r["end"] - fill_end) * 1000
        for r in results
        if fill_end is not None and r["cache"] == "COLLAPSED"
    ]
    nginx_wakes = [r["wake"] for r in results if r["wake"] is not None]
    first_end = min(r["end"] for r in results)
    after_first = [(r["end"] - first_end) * 1000 for r in results]
    print(json.dumps({
        "n": n,
        "ok": sum(1 for r in results if r["status"] == "200"),
        "fills": len(fills),
        "statuses": sorted({r["cache"] for r in results}),
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "wake_p50_ms": pct(wakeups, 50),
        "wake_p99_ms": pct(wakeups, 99),
        "spread_ms": (max(r["end"] for r in results) - t0) * 1000,
        "nginx_wake_p50_ms": pct(nginx_wakes, 50),
        "nginx_wake_p99_ms": pct(nginx_wakes, 99),
        "nginx_wake_max_ms": max(nginx_wakes) if nginx_wakes else None,
        "after_first_p50_ms": pct(after_first, 50),
        "after_first_p99_ms": pct(after_first, 99),
    }))


asyncio.run(main())
