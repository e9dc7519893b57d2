#!/usr/bin/env python3
"""Import cycles of the library's source, between modules and between files.

Reads every `.rs` file under src/ (not src/bin, a crate of its own), collects the paths it
names (`use crate::...`, `use super::...`, and `crate::`/`super::` paths in code; comments
and `#[cfg(test)]` modules left out), resolves each to the file of the longest module prefix
that exists, and prints:

- the module graph's cycles (top-level modules: `numpack`, `publish`, ...);
- the file graph's cycles (`ffi/args.rs`, ...).

Each cycle is a strongly connected component of the graph, printed with one closed path
through it. Exit status 0, or with `--strict` 1 when there is a cycle.

    python3 scripts/check_cycles.py [--strict] [SRC_DIR]
"""

import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_files(src):
    """{module path tuple: file path relative to src}."""
    mods = {}
    for root, dirs, files in os.walk(src):
        rel_root = os.path.relpath(root, src)
        if rel_root.split(os.sep)[0] == "bin":
            dirs[:] = []
            continue
        dirs.sort()
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            rel = os.path.normpath(os.path.join(rel_root, f))
            parts = rel[:-3].split(os.sep)
            if parts == ["lib"] or parts == ["main"]:
                parts = []
            elif parts[-1] == "mod":
                parts = parts[:-1]
            mods[tuple(parts)] = rel
    return mods


def strip_code(text):
    """The file's code without comments, string contents and `#[cfg(test)]` modules."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    text = re.sub(r"//[^\n]*", "", text)
    out = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == "#[cfg(test)]" and i + 1 < len(lines) and re.match(
            r"\s*(pub(\([^)]*\))?\s+)?mod\s+" + IDENT + r"\s*\{", lines[i + 1]
        ):
            # Skip the module: to the line closing its brace.
            depth = 0
            i += 1
            while i < len(lines):
                depth += lines[i].count("{") - lines[i].count("}")
                i += 1
                if depth <= 0:
                    break
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e] (whitespace already removed)."""
    for k, ch in enumerate(tree):
        if ch == "{":
            prefix = tree[:k]
            inner = tree[k + 1 : tree.rindex("}")]
            parts, cur, d = [], "", 0
            for c in inner:
                if c == "," and d == 0:
                    parts.append(cur)
                    cur = ""
                    continue
                d += c == "{"
                d -= c == "}"
                cur += c
            parts.append(cur)
            out = []
            for p in parts:
                if p:
                    out += [prefix + q if q != "self" else prefix.rstrip(":") for q in expand_use(p)]
            return out
    return [tree.split(" as ")[0]]


def referenced_paths(code):
    """Every path the code names from `crate::`, `super::` or `self::`."""
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", code):
        tree = re.sub(r"\s+", "", m.group(1).replace(" as ", "@as@"))
        for p in expand_use(tree):
            paths.append(p.split("@as@")[0])
    code_wo_use = re.sub(r"\buse\s+[^;]+;", "", code)
    for m in re.finditer(r"\b((?:crate|super)(?:::(?:super|" + IDENT + "))+)", code_wo_use):
        paths.append(m.group(1))
    return [p for p in paths if p.startswith(("crate::", "super::", "self::"))]


def resolve(path, here, mods):
    """The module a path lands in: the longest prefix that is a module of the crate."""
    segs = path.split("::")
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    else:
        # A file `a/b.rs` is module a::b, `a/mod.rs` module a: `super` is the module's
        # parent, `self` the module itself.
        base = list(here)
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    full = base + segs
    for n in range(len(full), -1, -1):
        if tuple(full[:n]) in mods:
            return tuple(full[:n])
    return None


def sccs(graph):
    """Tarjan's strongly connected components with more than one node."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def a_cycle(graph, comp):
    """A closed path through the component, from its first node (breadth-first)."""
    comp = set(comp)
    start = min(comp)
    prev = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph.get(v, ())):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if w in comp and w not in prev:
                prev[w] = v
                queue.append(w)
    return [start]


def main(argv):
    strict = "--strict" in argv
    args = [a for a in argv if not a.startswith("--")]
    src = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "src")
    mods = module_files(src)
    file_graph, mod_graph, why = {}, {}, {}
    for mod, rel in mods.items():
        with open(os.path.join(src, rel), encoding="utf-8") as f:
            code = strip_code(f.read())
        is_mod_rs = rel.endswith("mod.rs") or rel == "lib.rs"
        for path in referenced_paths(code):
            target = resolve(path, mod, mods)
            if target is None or target == mod:
                continue
            a, b = rel, mods[target]
            # A parent naming its own child module (`mod x; pub use x::...`) is structure,
            # not a dependency.
            if target[: len(mod)] == mod and is_mod_rs:
                continue
            file_graph.setdefault(a, set()).add(b)
            why.setdefault((a, b), path)
            ma = mod[0] if mod else "(lib.rs)"
            mb = target[0] if target else "(lib.rs)"
            if ma != mb and ma != "(lib.rs)" and mb != "(lib.rs)":
                mod_graph.setdefault(ma, set()).add(mb)
                why.setdefault((ma, mb), f"{rel}: {path}")

    found = 0
    for title, graph in (("module", mod_graph), ("file", file_graph)):
        comps = sccs(graph)
        print(f"{title} cycles: {len(comps)}")
        for comp in comps:
            found += 1
            cyc = a_cycle(graph, comp)
            print("  " + " -> ".join(cyc))
            for a, b in zip(cyc, cyc[1:]):
                print(f"      {a} -> {b}  ({why[(a, b)]})")
            if len(comp) > len(cyc) - 1:
                print(f"      (the component: {', '.join(comp)})")
    return 1 if strict and found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
