#!/usr/bin/env python3
"""Checks the shape of the nginx layer: import circles inside src/stale/ and src/redis/ and
the size of each file, in code lines (not blank, not only a comment).

A file "imports" another of its folder when it names it in a path: `super::x`, `crate::stale::x`
(or `self::x` from the folder's root file). Circles are the strongly connected components of
that graph. Exits 1 when a circle has more than MAX_CIRCLE files or a file more than
MAX_LINES code lines; prints what it measured either way."""
import os, re, sys

MAX_CIRCLE = 3
MAX_LINES = 500
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def code_lines(path):
    n, in_block = 0, False
    for line in open(path, encoding="utf-8"):
        s = line.strip()
        if in_block:
            if "*/" in s:
                in_block = False
            continue
        if not s or s.startswith("//"):
            continue
        if s.startswith("/*"):
            in_block = "*/" not in s
            continue
        n += 1
    return n


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def files_of(folder):
    out = {}
    base = os.path.join(ROOT, folder)
    for dirpath, _, names in os.walk(base):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(dirpath, n)
                rel = os.path.relpath(p, base)[:-3].replace(os.sep, "::")
                out[rel] = p
    return out


def module_of(rel):
    """`a::b` for a/b.rs, `a` for a.rs; a `mod.rs` is its folder."""
    return rel[:-5] if rel.endswith("::mod") else rel


def edges(folder, files):
    mods = {module_of(r): r for r in files}
    graph = {r: set() for r in files}
    for rel, path in files.items():
        me = module_of(rel)
        text = strip_comments(open(path, encoding="utf-8").read())
        targets = set()
        for m in re.finditer(r"crate::%s::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)" % folder, text):
            targets.add(m.group(1))
        for m in re.finditer(r"\b((?:super::)+)([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)", text):
            up = m.group(1).count("super::")
            base = me.split("::")[:-up] if up <= len(me.split("::")) else []
            targets.add("::".join(base + [m.group(2)]))
        for m in re.finditer(r"\bself::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)", text):
            targets.add(me + "::" + m.group(1))
        # `use super::{a, b::C}` groups
        for m in re.finditer(r"\b((?:super::)+|crate::%s::)\{([^}]*)\}" % folder, text):
            if m.group(1).startswith("crate"):
                base = []
            else:
                up = m.group(1).count("super::")
                base = me.split("::")[:-up] if up <= len(me.split("::")) else []
            for part in m.group(2).split(","):
                part = part.strip().split(" as ")[0]
                if part and part[0].islower() and part != "self":
                    targets.add("::".join(base + [part]))
        # a folder's root file (`x/mod.rs`) naming its own children (`child::item`)
        if rel.endswith("::mod") or rel == "mod":
            for m in re.finditer(r"(?<![:\w])([a-z_][a-z0-9_]*)::", text):
                targets.add(me + "::" + m.group(1))
        for t in targets:
            parts = t.split("::")
            # the longest prefix that names a file of the folder
            for k in range(len(parts), 0, -1):
                cand = "::".join(parts[:k])
                if cand in mods and mods[cand] != rel:
                    graph[rel].add(mods[cand])
                    break
    return graph


def sccs(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main():
    ok = True
    for folder in ("stale", "redis"):
        files = files_of(folder)
        graph = edges(folder, files)
        circles = [sorted(c) for c in sccs(graph) if len(c) > 1]
        biggest = max((len(c) for c in circles), default=1)
        print(f"src/{folder}/: {len(files)} files, largest import circle {biggest}")
        for c in circles:
            flag = "  TOO BIG" if len(c) > MAX_CIRCLE else ""
            print(f"  circle of {len(c)}: {', '.join(c)}{flag}")
            ok &= len(c) <= MAX_CIRCLE
        for rel, path in sorted(files.items()):
            n = code_lines(path)
            if n > MAX_LINES:
                print(f"  {folder}/{rel.replace('::', '/')}.rs: {n} code lines (over {MAX_LINES})")
                ok = False
    for extra in ("nginx",):
        for rel, path in sorted(files_of(extra).items()):
            n = code_lines(path)
            if n > MAX_LINES:
                print(f"  {extra}/{rel.replace('::', '/')}.rs: {n} code lines (over {MAX_LINES})")
                ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
