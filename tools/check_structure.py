#!/usr/bin/env python3
"""The code-structure rules that CI enforces (docs/architecture.md, "Rules the CI checks").

1. No import circle between the modules of one crate.
2. `unsafe` only in per-architecture kernel modules (files named `x86_64.rs`, `aarch64.rs` or
   `dsp.rs`), the firmware's hardware layer and the files of ALLOWED_UNSAFE (each with its
   reason; the workspace `Cargo.toml` lists the same), every `unsafe` block or function
   preceded by a `// SAFETY:` line (or `# Safety` docs for an `unsafe fn`). An ALLOWED_UNSAFE
   entry that no longer holds `unsafe` is reported too, so the list stays true.
3. No function longer than MAX_FUNCTION_LINES outside those per-architecture modules (SIMD
   kernels may be longer where splitting them would cost registers) and test modules.

Import circles: reads every `.rs` file under each crate's `src/`, finds the paths it names through `crate::`,
`super::` and `self::` (in `use` trees and inline), and builds, for every module, the graph of
its child modules: an edge `a -> b` when code anywhere inside child `a` names something inside
sibling `b`. A circle in any of these graphs is reported with the files and lines that make it,
and the script exits 1. References from a module to its own ancestors or descendants are not
sibling edges and are allowed (a parent composes its children; a child may use what its parent
defines for it).

    python3 tools/check_structure.py trainer runtime firmware/int8
"""
import re
import sys
from collections import defaultdict
from pathlib import Path

PATH_START = re.compile(r"\b(crate|super|self)\s*::")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
INLINE_MOD = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*\{")


def strip_comments_and_strings(text):
    """Blanks comments and string/char literals, keeping line structure."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 20]) and (i == 0 or not text[i - 1].isalnum()):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            end = n if end < 0 else end + 1 + len(hashes)
            out.append(re.sub(r"[^\n]", " ", text[i:end]))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(re.sub(r"[^\n]", " ", text[i:j + 1]))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4] + "  "):
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            length = len(m.group(0)) if m else 1
            out.append(" " * length)
            i += length
        else:
            out.append(c)
            i += 1
    return "".join(out)


def module_of(src, file):
    """The module path (list of names below the crate root) a file defines."""
    rel = file.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main") or (parts[0] == "bin"):
        parts = parts[:-1] if parts[-1] in ("mod", "lib", "main") else None
    return parts


def inline_module_at(lines):
    """For each line, the inline-module path (`mod tests { … }`) it sits in."""
    stack, depth, result = [], 0, []
    for line in lines:
        m = INLINE_MOD.match(line)
        result.append([name for name, _ in stack] + ([m.group(1)] if m else []))
        for ch in line:
            if ch == "{":
                depth += 1
                if m and not any(d == depth for _, d in stack[-1:]) and len(result[-1]) > len(stack):
                    stack.append((m.group(1), depth))
                    m = None
            elif ch == "}":
                if stack and stack[-1][1] == depth:
                    stack.pop()
                depth -= 1
    return result


def expand_use_tree(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e'] (aliases and globs dropped)."""
    tree = re.sub(r"\s+", "", tree)

    def split_top(s):
        parts, depth, start = [], 0, 0
        for i, ch in enumerate(s):
            depth += ch == "{"
            depth -= ch == "}"
            if ch == "," and depth == 0:
                parts.append(s[start:i])
                start = i + 1
        parts.append(s[start:])
        return [p for p in parts if p]

    def expand(s):
        brace = s.find("{")
        if brace < 0:
            return [re.sub(r"as\w+$", "", s).rstrip(":*").rstrip(":")]
        prefix = s[:brace]
        inner = s[brace + 1:s.rfind("}")]
        return [prefix + rest for part in split_top(inner) for rest in expand(part)]

    return [p for part in split_top(tree) for p in expand(part)]


def referenced_paths(code):
    """(line number, path) for every crate/super/self path in the code, use trees expanded."""
    refs = []
    for m in re.finditer(r"\buse\s+((?:crate|super|self)\s*::[^;]*);", code, re.S):
        line = code.count("\n", 0, m.start()) + 1
        refs += [(line, p) for p in expand_use_tree(m.group(1))]
    masked = re.sub(r"\buse\s+(?:crate|super|self)\s*::[^;]*;", lambda m: re.sub(r"[^\n]", " ", m.group(0)), code, flags=re.S)
    for m in PATH_START.finditer(masked):
        tail = re.match(r"(?:\s*::\s*(?:super|[A-Za-z_][A-Za-z0-9_]*))+", masked[m.end() - 2:])
        if tail:
            path = m.group(1) + re.sub(r"\s+", "", tail.group(0))
            refs.append((masked.count("\n", 0, m.start()) + 1, path))
    return refs


def resolve(path, here, modules):
    """The module (tuple) a path names, given the module (tuple) the code is in."""
    parts = path.split("::")
    if parts[0] == "crate":
        base, rest = (), parts[1:]
    else:
        base, rest = tuple(here), parts[1:]
        if parts[0] == "super":
            base = base[:-1]
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    target = base
    for name in rest:
        if target + (name,) in modules:
            target = target + (name,)
        else:
            break
    return target


def crate_edges(src):
    files = sorted(src.rglob("*.rs"))
    file_module = {}
    for f in files:
        mod = module_of(src, f)
        if mod is not None:
            file_module[f] = tuple(mod)
    modules = set(file_module.values())
    # Inline modules are modules too (tests refer to `super::` from inside them).
    inline = {}
    for f, mod in file_module.items():
        code = strip_comments_and_strings(f.read_text())
        lines = code.split("\n")
        inline[f] = (code, inline_module_at(lines))
        for path in inline[f][1]:
            for k in range(1, len(path) + 1):
                modules.add(mod + tuple(path[:k]))
    edges = defaultdict(list)
    for f, mod in file_module.items():
        code, at = inline[f]
        for line, path in referenced_paths(code):
            here = mod + tuple(at[line - 1])
            target = resolve(path, here, modules)
            # The sibling edge lies below the longest common ancestor of `here` and `target`.
            common = 0
            while common < min(len(here), len(target)) and here[common] == target[common]:
                common += 1
            if common == len(here) or common == len(target):
                continue  # ancestor or descendant
            parent = here[:common]
            edges[(parent, here[common], target[common])].append(f"{f}:{line} ({path})")
    return edges


def find_cycles(edges):
    graphs = defaultdict(lambda: defaultdict(set))
    for parent, a, b in edges:
        graphs[parent][a].add(b)
    cycles = []
    for parent, graph in graphs.items():
        # Tarjan's strongly connected components.
        index, low, stack, on, counter, sccs = {}, {}, [], set(), [0], []

        def visit(v):
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on.add(v)
            for w in graph.get(v, ()):
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
                    sccs.append(sorted(scc))

        for v in list(graph):
            if v not in index:
                visit(v)
        cycles += [(parent, scc) for scc in sccs]
    return cycles


MAX_FUNCTION_LINES = 120
ARCH_FILES = {"x86_64.rs", "aarch64.rs", "dsp.rs"}
# The only files outside per-architecture modules where `unsafe` is allowed (paths from the
# repository root), with the reason. Keep in step with the workspace Cargo.toml's lint comment.
ALLOWED_UNSAFE = {
    "trainer/src/model/cpu/output_buffer.rs": "output tensors filled on rayon's threads without "
    "being zeroed first: a `Vec` whose length is set over memory the chunks wrote (no safe "
    "equivalent skips the zeroing, ~3 % of a CPU SimCLR step)",
    "trainer/src/model/cpu/matmul.rs": "the call into `gemm::gemm`, an `unsafe fn` of the gemm "
    "crate taking raw pointers and strides, wrapped in a safe function that checks them",
}
REPO_ROOT = Path(__file__).resolve().parent.parent


def repo_path(file):
    """`file` as a path from the repository root (as written when it lies outside)."""
    try:
        return Path(file).resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return Path(file).as_posix()
FN_START = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?(?:extern\s+\"C\"\s+)?fn\s+([A-Za-z_][A-Za-z0-9_]*)")


def is_arch_file(file, hardware_layers):
    return file.name in ARCH_FILES or any(str(file).startswith(h) for h in hardware_layers)


def test_module_lines(lines):
    """Line indexes inside `#[cfg(test)] mod … { … }` blocks."""
    inside, depth, start = set(), 0, None
    for i, line in enumerate(lines):
        if start is None and INLINE_MOD.match(line) and i > 0 and "cfg(test)" in lines[i - 1]:
            start, depth = i, 0
        if start is not None:
            inside.add(i)
            depth += line.count("{") - line.count("}")
            if depth <= 0 and i > start:
                start = None
    return inside


def body_start(lines, i):
    """(line, column) of the `{` opening the body of the function declared at line `i`, or None
    for a declaration without a body (a trait item ending in `;`). Brackets are tracked so that
    an array type `[T; N]` in the signature is not taken for the end of a declaration."""
    depth = 0
    for j in range(i, len(lines)):
        for k, ch in enumerate(lines[j]):
            if ch in "([":
                depth += 1
            elif ch in ")]":
                depth -= 1
            elif depth == 0 and ch == ";":
                return None
            elif depth == 0 and ch == "{":
                return j, k
    return None


def long_functions(file, code):
    """(name, first line, length) of every function over the limit, tests left out."""
    lines = code.split("\n")
    tests = test_module_lines(lines)
    found = []
    for i, line in enumerate(lines):
        m = FN_START.match(line)
        if not m or i in tests:
            continue
        start = body_start(lines, i)
        if start is None:
            continue
        j, k = start
        depth, text = 0, lines[j][k:]
        while True:
            depth += text.count("{") - text.count("}")
            if depth <= 0 or j + 1 >= len(lines):
                break
            j += 1
            text = lines[j]
        if j - i + 1 > MAX_FUNCTION_LINES:
            found.append((m.group(1), i + 1, j - i + 1))
    return found


def unsafe_problems(file, raw, code, allowed):
    """Places where `unsafe` is used outside a per-architecture module or an ALLOWED_UNSAFE
    file, or without SAFETY."""
    problems = []
    raw_lines = raw.split("\n")
    for i, line in enumerate(code.split("\n")):
        if not re.search(r"\bunsafe\b", line) or "unsafe_code" in line:
            continue
        if not allowed:
            problems.append(f"{file}:{i + 1}: unsafe outside a per-architecture module or ALLOWED_UNSAFE file")
            continue
        if re.search(r"\bunsafe\s+(impl|trait)\b", line):
            continue
        before = "\n".join(raw_lines[max(0, i - 12):i + 1])
        if "SAFETY:" not in before and "# Safety" not in before:
            problems.append(f"{file}:{i + 1}: unsafe without a `// SAFETY:` comment before it")
    return problems


def stale_allowed_unsafe(crate):
    """ALLOWED_UNSAFE entries inside `crate` whose file is gone or holds no `unsafe`."""
    stale = []
    prefix = repo_path(Path(crate) / "src") + "/"
    for path in sorted(ALLOWED_UNSAFE):
        if not path.startswith(prefix):
            continue
        file = REPO_ROOT / path
        code = strip_comments_and_strings(file.read_text()) if file.is_file() else ""
        if not any(re.search(r"\bunsafe\b", line) and "unsafe_code" not in line for line in code.split("\n")):
            stale.append(f"{path}: listed in ALLOWED_UNSAFE but holds no unsafe (remove the entry)")
    return stale


def check_code_rules(crate, hardware_layers):
    failed = False
    for problem in stale_allowed_unsafe(crate):
        print(problem)
        failed = True
    for file in sorted((Path(crate) / "src").rglob("*.rs")):
        raw = file.read_text()
        code = strip_comments_and_strings(raw)
        arch = is_arch_file(file, hardware_layers)
        allowed = arch or repo_path(file) in ALLOWED_UNSAFE
        for problem in unsafe_problems(file, raw, code, allowed):
            print(problem)
            failed = True
        if arch:
            continue
        for name, line, length in long_functions(file, code):
            print(f"{file}:{line}: fn {name} is {length} lines (limit {MAX_FUNCTION_LINES})")
            failed = True
    return failed


def main(crates, hardware_layers=("firmware/device/src",)):
    failed = False
    for crate in crates:
        failed |= check_code_rules(crate, hardware_layers)
        src = Path(crate) / "src"
        if not src.is_dir():
            print(f"{crate}: no src/ folder", file=sys.stderr)
            return 2
        edges = crate_edges(src)
        cycles = find_cycles(edges)
        modules = len({(p, a) for p, a, _ in edges})
        if not cycles:
            print(f"{crate}: no import circle ({modules} modules with sibling imports)")
        for parent, scc in cycles:
            failed = True
            where = "::".join(("crate",) + parent)
            print(f"{crate}: import circle among {where}::{{{', '.join(scc)}}}")
            members = set(scc)
            for (p, a, b), places in sorted(edges.items()):
                if p == parent and a in members and b in members:
                    print(f"  {a} -> {b}: {places[0]}" + (f" (+{len(places) - 1} more)" if len(places) > 1 else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["trainer", "runtime", "firmware/int8"]))
