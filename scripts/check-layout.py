#!/usr/bin/env python3
"""Layout rules of ARCHITECTURE.md, checked: no source file over the line limit, no two modules
of a crate that import each other, and each folder module says what it owns (a `//!` line).

Usage: scripts/check-layout.py [--max-lines N] [--graph]
Exit 1 with one line per violation.
"""
import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATES = ["gateway", "tasks", "proto", "telemetry", "loadtest"]
PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^;]*?)\}", re.S)


def strip(text):
    """Source without comments, string and char literals, and the trailing `#[cfg(test)] mod tests`."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif (m := re.compile(r'b?r(#*)"').match(text, i)) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = '"' + m.group(1)
            j = text.find(end, m.end())
            i = n if j < 0 else j + len(end)
            out.append('""')
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            out.append('""')
        elif c == "'" and (m := re.compile(r"'(?:\\.[^']*|[^\\'])'").match(text, i)):
            i = m.end()
            out.append("' '")
        else:
            out.append(c)
            i += 1
    text = "".join(out)
    m = re.search(r"#\[cfg\(test\)\]\s*mod tests\b", text)
    return text[: m.start()] if m else text


def modules(src):
    """Module path (tuple) → file, for every file of one crate's src/ (bins excluded)."""
    out = {}
    for f in src.rglob("*.rs"):
        rel = f.relative_to(src)
        if rel.parts[0] == "bin" or rel.name == "main.rs":
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] in ("mod", "lib"):
            parts.pop()
        out[tuple(parts)] = f
    return out


def resolve(mods, here, kind, rest):
    """The module file a `crate::`/`super::`/`self::` path names: its longest module prefix."""
    if kind == "crate":
        base = []
    else:
        base = list(here)
        f = mods[here]
        # a file `a/b.rs` is module a::b; `super` is a, `self` is a::b
        if kind == "super":
            base = base[:-1]
    parts = rest
    while parts and parts[0] == "super":
        base = base[:-1]
        parts = parts[1:]
    path = base + parts
    for n in range(len(path), -1, -1):
        if tuple(path[:n]) in mods:
            return tuple(path[:n])
    return ()


def edges(mods):
    out = {}
    for here, f in mods.items():
        text = strip(f.read_text())
        targets = set()
        refs = []
        for m in GROUP.finditer(text):
            prefix = [p for p in m.group(2).split("::") if p]
            for item in re.split(r",", m.group(3)):
                head = re.split(r"::|\s|\{", item.strip())[0]
                if head and head not in ("self", "*"):
                    refs.append((m.group(1), prefix + [head]))
                else:
                    refs.append((m.group(1), prefix))
        for m in PATH.finditer(text):
            refs.append((m.group(1), [p for p in m.group(2).split("::") if p]))
        for kind, rest in refs:
            t = resolve(mods, here, kind, rest)
            if t != here and not (len(t) > len(here) and t[: len(here)] == here and kind == "self"):
                targets.add(t)
        # a module using its own descendants (`mod x; pub use x::Y`) is the owner, not a cycle
        targets = {t for t in targets if not (len(t) > len(here) and t[: len(here)] == here)}
        out[here] = targets
    return out


def cycles(g):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(scc)

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-lines", type=int, default=450)
    ap.add_argument("--graph", action="store_true", help="print every module's imports")
    args = ap.parse_args()
    bad = []
    for crate in CRATES:
        src = ROOT / crate / "src"
        if not src.is_dir():
            continue
        for f in sorted(src.rglob("*.rs")):
            n = len(f.read_text().splitlines())
            if n > args.max_lines:
                bad.append(f"{f.relative_to(ROOT)}: {n} lines (limit {args.max_lines})")
            if f.name == "mod.rs" and not f.read_text().lstrip().startswith("//!"):
                bad.append(f"{f.relative_to(ROOT)}: a folder module starts with a `//!` line saying what it owns")
        mods = modules(src)
        g = edges(mods)
        name = lambda m: "::".join(m) or "crate"
        if args.graph:
            for m in sorted(g):
                print(f"{crate}: {name(m)} -> {', '.join(sorted(name(t) for t in g[m]))}")
        for a in sorted(g):
            for b in sorted(g[a]):
                if a < b and a in g.get(b, ()):
                    bad.append(f"{crate}: {name(a)} and {name(b)} import each other")
        for scc in cycles(g):
            if len(scc) > 2:
                bad.append(f"{crate}: an import cycle through {', '.join(sorted(map(name, scc)))}")
    for line in bad:
        print(line)
    if bad:
        sys.exit(1)
    print(f"layout: ok ({', '.join(CRATES)})")


if __name__ == "__main__":
    main()
