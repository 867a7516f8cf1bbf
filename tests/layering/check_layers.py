#!/usr/bin/env python3
"""check_layers.py - the source tree's floors, checked include by include.

The floors are written once, in docs/architecture.md between the lines
`<!-- floors -->` and `<!-- /floors -->`: one floor a line, from the ground up,
each line a number and the folders on that floor. A folder may include headers
of its own and of the floors below it; an include that reaches a folder on its
own floor (a sibling) or above fails, named FILE:LINE, and so does an include
this script cannot place. tests/ and examples/ stand above every floor.

  check_layers.py [ROOT]     exit 0 when the tree keeps its floors, 1 naming every
                             violation, 2 when the floors cannot be read
"""
import os
import re
import sys

# Generated headers, by the floor that owns what they are generated from.
GENERATED = {
    "tidal.pb-c.h": "proto",  # protoc-c, from proto/tidal.proto
    "tensorboard.pb-c.h": "proto",  # protoc-c, from proto/tensorboard.proto
}
# Files the bench and CLI embed at build time (cmake/embed.cmake): <symbol>.h
EMBEDDED = re.compile(r"^[a-z0-9_]+_(py|js|yaml|html)\.h$")
ABOVE_ALL = ("tests", "examples")
SOURCES = (".c", ".h", ".cu", ".cuh")
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')


def read_floors(root):
    path = os.path.join(root, "docs", "architecture.md")
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as e:
        sys.exit(f"check_layers: {path}: {e}")
    m = re.search(r"<!-- floors -->(.*?)<!-- /floors -->", text, re.S)
    if not m:
        print(f"check_layers: {path}: no <!-- floors --> ... <!-- /floors --> block", file=sys.stderr)
        sys.exit(2)
    floors = {}
    for line in m.group(1).splitlines():
        fm = re.match(r"^\s*(\d+)\s+((?:[A-Za-z0-9_]+/\s*)+)$", line)
        if fm:
            for folder in fm.group(2).split():
                floors[folder.rstrip("/")] = int(fm.group(1))
    if not floors:
        print(f"check_layers: {path}: the floors block names no folder", file=sys.stderr)
        sys.exit(2)
    return floors


def owner(rel):
    """The top folder of a repository-relative path ('' for the root)."""
    return rel.split("/", 1)[0] if "/" in rel else ""


def check(root):
    floors = read_floors(root)
    problems = []
    checked = 0
    for top in sorted(os.listdir(root)):
        if top.startswith(".") or top.startswith("build") or not os.path.isdir(os.path.join(root, top)):
            continue
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, top)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.endswith(SOURCES):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                here = owner(rel)
                if here in ABOVE_ALL:
                    continue
                if here not in floors:
                    problems.append(f"{rel}:1: folder {here}/ is on no floor (add it to docs/architecture.md)")
                    continue
                with open(path, encoding="utf-8", errors="replace") as f:
                    for lineno, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        checked += 1
                        inc = m.group(1)
                        if "/" in inc and owner(inc) in floors:
                            there = owner(inc)
                        elif os.path.exists(os.path.join(dirpath, inc)):
                            there = here  # beside the including file
                        elif inc in GENERATED:
                            there = GENERATED[inc]
                        elif EMBEDDED.match(inc):
                            continue  # embedded text, no code
                        else:
                            problems.append(f'{rel}:{lineno}: #include "{inc}": not a file of any floor')
                            continue
                        if there == here:
                            continue
                        if floors[there] == floors[here]:
                            problems.append(f'{rel}:{lineno}: #include "{inc}": {here}/ and {there}/ share '
                                            f"floor {floors[here]} and never include each other")
                        elif floors[there] > floors[here]:
                            problems.append(f'{rel}:{lineno}: #include "{inc}": {here}/ (floor {floors[here]}) '
                                            f"includes from {there}/ (floor {floors[there]}), above it")
    return problems, checked


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
    root = os.path.abspath(root)
    problems, checked = check(root)
    for p in problems:
        print(p)
    if problems:
        print(f"check_layers: {len(problems)} include(s) break the floors of docs/architecture.md", file=sys.stderr)
        return 1
    print(f"check_layers: {checked} includes keep the floors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
