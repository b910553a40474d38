#!/usr/bin/env python3
"""Fails when a module of src/ imports a module above it, or when the submodules of one module
import each other in a circle.

The layers are read from ARCHITECTURE.md (the fenced block tagged `layers`), so the map and
this check cannot disagree: every top-level module of src/ must be listed there, a module may
import only modules of lower layers, and the modules `beside` the service (the emulator, the
CLI) may import only layer 0 and are imported by no module of the library.

Imports are found as `crate::<module>` paths, grouped `use crate::{a::.., b}` included, after
comments and string literals are removed. Inside a module, a submodule's imports of its siblings
are its `super::<sibling>` and `crate::<module>::<sibling>` paths (the module's own mod.rs, which
declares and re-exports them, is not a sibling). Usage: .ci/check-layers.py [repo root]
"""

import os
import re
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
SRC = os.path.join(ROOT, "src")
# Crate-root files that are not modules of a layer: the library root and the binary.
ROOTS = {"lib", "main"}
# Re-exports at the crate root, resolved to the module that defines them.
ALIASES = {"proto": "contract"}


def read_layers():
    text = open(os.path.join(ROOT, "ARCHITECTURE.md"), encoding="utf-8").read()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    if not block:
        sys.exit("check-layers: ARCHITECTURE.md has no ```layers block")
    layers = {}
    for line in block.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        level, _, modules = line.partition(":")
        for module in modules.split():
            layers[module] = level.strip()
    return layers


def strip(source):
    source = re.sub(r"//[^\n]*", "", source)
    source = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
    return re.sub(r'"(\\.|[^"\\])*"', '""', source)


def imported_modules(source, prefix=r"\bcrate::"):
    """The first identifiers of the paths after `prefix` (a regex), groups included."""
    found = set()
    for match in re.finditer(prefix, source):
        rest = source[match.end():]
        if rest.startswith("{"):
            depth, items = 0, ""
            for index, char in enumerate(rest):
                if char == "{":
                    depth += 1
                elif char == "}":
                    depth -= 1
                    if depth == 0:
                        items = rest[1:index]
                        break
            # First identifier of each top-level item of the group.
            depth, item_start, tops = 0, 0, []
            for index, char in enumerate(items):
                if char == "{":
                    depth += 1
                elif char == "}":
                    depth -= 1
                elif char == "," and depth == 0:
                    tops.append(items[item_start:index])
                    item_start = index + 1
            tops.append(items[item_start:])
            for item in tops:
                name = re.match(r"\s*([A-Za-z_]\w*)", item)
                if name:
                    found.add(name.group(1))
        else:
            name = re.match(r"([A-Za-z_]\w*)", rest)
            if name:
                found.add(name.group(1))
    return found


def sibling_edges():
    """For each module with submodules: submodule -> the sibling submodules it imports."""
    edges = {}
    for module in sorted(os.listdir(SRC)):
        directory = os.path.join(SRC, module)
        if not os.path.isdir(directory):
            continue
        siblings = {
            name.removesuffix(".rs")
            for name in os.listdir(directory)
            if name != "mod.rs" and (name.endswith(".rs") or os.path.isdir(os.path.join(directory, name)))
        }
        graph = {sibling: set() for sibling in siblings}
        for current, _, files in os.walk(directory):
            for file in files:
                if not file.endswith(".rs"):
                    continue
                relative = os.path.relpath(os.path.join(current, file), directory).split(os.sep)
                sibling = relative[0].removesuffix(".rs")
                if sibling == "mod":
                    continue
                source = strip(open(os.path.join(current, file), encoding="utf-8").read())
                found = imported_modules(source, rf"\bcrate::{module}::")
                if len(relative) == 1:
                    found |= imported_modules(source, r"\bsuper::")
                graph[sibling] |= {name for name in found if name in siblings and name != sibling}
        edges[module] = graph
    return edges


def circles(graph):
    """The circles of a directed graph, each once (as its path from its smallest node)."""
    found = set()

    def walk(start, node, path):
        for following in sorted(graph[node]):
            if following == start:
                found.add(tuple(path))
            elif following not in path and following > start:
                walk(start, following, path + [following])

    for start in sorted(graph):
        walk(start, start, [start])
    return sorted(found)


def main():
    layers = read_layers()
    problems = []
    for module, graph in sibling_edges().items():
        for circle in circles(graph):
            names = " -> ".join(f"{module}::{name}" for name in circle + (circle[0],))
            problems.append(f"src/{module}/: submodules import each other in a circle: {names}")
    present = set()
    for directory, _, files in os.walk(SRC):
        for file in sorted(files):
            if not file.endswith(".rs"):
                continue
            path = os.path.join(directory, file)
            relative = os.path.relpath(path, SRC)
            module = relative.split(os.sep)[0].removesuffix(".rs")
            if module in ROOTS:
                continue
            present.add(module)
            if module not in layers:
                problems.append(f"src/{relative}: module `{module}` is not in ARCHITECTURE.md's layers")
                continue
            source = strip(open(path, encoding="utf-8").read())
            for imported in sorted(imported_modules(source)):
                imported = ALIASES.get(imported, imported)
                if imported in (module, "self") or imported not in layers:
                    continue
                mine, theirs = layers[module], layers[imported]
                if theirs == "beside":
                    problems.append(f"src/{relative}: `{module}` imports `{imported}`, which sits beside the service")
                elif mine == "beside":
                    if theirs != "0":
                        problems.append(f"src/{relative}: `{module}` (beside) imports `{imported}` (layer {theirs}); only layer 0")
                elif int(theirs) >= int(mine):
                    problems.append(
                        f"src/{relative}: `{module}` (layer {mine}) imports `{imported}` (layer {theirs}): not below it"
                    )
    for module in sorted(set(layers) - present):
        problems.append(f"ARCHITECTURE.md lists `{module}`, which src/ does not have")
    for problem in problems:
        print(problem)
    if problems:
        sys.exit(f"check-layers: {len(problems)} problem(s)")
    print(f"check-layers: {len(present)} modules, every import points down, no circle inside a module")


if __name__ == "__main__":
    main()
