#!/usr/bin/env python3
"""Availability check for the Apple-only Swift code, driven by scripts/availability.tsv.

Swift on Linux ignores iOS / macOS availability, so the type-check against the stand-ins (typecheck-engine.sh)
accepts a call to an iOS 18 API from code that runs on iOS 17. Xcode would refuse it. This check reads the table of
the Apple APIs the stand-ins declare and, in every Swift file of the package and the app, finds each use of an API
newer than the deployment target (read from Package.swift and Xcode/project.yml, which must agree) and makes sure it
sits inside `if #available(...) { }`, after `guard #available(...) else { }`, or inside a declaration marked
`@available(...)` with at least the API's versions. An API unavailable on a platform (`-` in the table) must sit
inside an `#if` that excludes that platform. It also checks that the stand-ins carry the table's @available, so the
table, the stand-ins and the code say the same thing.

This is a source check, not a compiler: it knows no types, so a member row (`Type.member`) matches `.member` on any
receiver in a file that imports the row's module; names inside string literals and comments are not uses. It
catches what the type-check cannot see; Xcode remains the authority.

usage: check_availability.py [--root swift-app] [--table T] [--no-stand-ins] [FILE.swift ...]
exit 0: clean; 1: findings (one line each, path:line: ...); 2: usage or table error.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

PLATFORMS = ("iOS", "macOS")
HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------------- versions

def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def show(version: tuple[int, ...] | None) -> str:
    return "unavailable" if version is None else ".".join(map(str, version))


@dataclass(frozen=True)
class Row:
    module: str
    symbol: str
    match: str
    need: dict  # platform -> version tuple, "any", or None (unavailable)

    @property
    def name(self) -> str:
        """The identifier a use contains: the last component, without its argument labels."""
        last = self.symbol.split("(")[0].split(".")[-1]
        return last

    def pattern(self) -> re.Pattern:
        if self.match == "type":
            return re.compile(r"(?<![\w.])" + re.escape(self.symbol) + r"\b")
        if self.match == "call":
            return re.compile(r"(?<![\w.])" + re.escape(self.name) + r"\s*\(")
        if self.match == "member":
            if self.name == "init":
                owner = self.symbol.split(".init(")[0].split(".")[-1]
                label = self.symbol.split("(")[1].split(":")[0]
                return re.compile(r"(?<![\w.])" + re.escape(owner) + r"\s*(?:<[^>]*>)?\s*\(\s*" + re.escape(label) + r"\s*:")
            return re.compile(r"\.\s*" + re.escape(self.name) + r"\b")
        raise ValueError(self.match)


def load_table(path: Path) -> list[Row]:
    rows: list[Row] = []
    header_seen = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        if not header_seen:
            if cells != ["module", "symbol", "match", "iOS", "macOS"]:
                raise SystemExit(f"{path}:{number}: expected the header 'module symbol match iOS macOS' (tab-separated)")
            header_seen = True
            continue
        if len(cells) != 5 or cells[2] not in ("type", "member", "call"):
            raise SystemExit(f"{path}:{number}: expected 5 tab-separated cells with match type|member|call: {line!r}")
        need = {}
        for platform, cell in zip(PLATFORMS, cells[3:]):
            need[platform] = None if cell == "-" else "any" if cell == "any" else parse_version(cell)
        rows.append(Row(cells[0], cells[1], cells[2], need))
    return rows


def deployment_target(root: Path) -> dict:
    """iOS / macOS minimums from Package.swift, checked against Xcode/project.yml."""
    package = (root / "Package.swift").read_text()
    target = {}
    for platform, swiftpm in (("iOS", "iOS"), ("macOS", "macOS")):
        m = re.search(r"\." + swiftpm + r"\(\.v(\d+)(?:_(\d+))?\)", package)
        if not m:
            raise SystemExit(f"Package.swift declares no .{swiftpm}(.vN) platform")
        target[platform] = (int(m.group(1)), int(m.group(2) or 0))
    project = root / "Xcode" / "project.yml"
    if project.exists():
        text = project.read_text()
        for platform in PLATFORMS:
            m = re.search(r"^\s+" + platform + r':\s*"?([\d.]+)"?', text, re.M)
            if m and parse_version(m.group(1)) + (0,) * (2 - len(m.group(1).split("."))) != target[platform]:
                raise SystemExit(f"Xcode/project.yml deploys {platform} {m.group(1)}, Package.swift {show(target[platform])}: make them agree")
    return target


# ---------------------------------------------------------------------------------------------------- source

def blank_comments_and_strings(src: str) -> str:
    """The source with comments and string literals (not their interpolations) replaced by spaces, same offsets."""
    out = list(src)
    i, n = 0, len(src)
    # stack of modes: "code" (with the paren depth at which an interpolation closes) or "str" (with its delimiter)
    stack: list[tuple] = [("code", None)]

    def blank(a: int, b: int) -> None:
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        mode = stack[-1]
        if mode[0] == "code":
            if src.startswith("//", i):
                j = src.find("\n", i)
                j = n if j < 0 else j
                blank(i, j)
                i = j
            elif src.startswith("/*", i):
                depth, j = 1, i + 2
                while j < n and depth:
                    if src.startswith("/*", j):
                        depth, j = depth + 1, j + 2
                    elif src.startswith("*/", j):
                        depth, j = depth - 1, j + 2
                    else:
                        j += 1
                blank(i, j)
                i = j
            elif src.startswith('"""', i):
                stack.append(("str", '"""'))
                blank(i, i + 3)
                i += 3
            elif src[i] == '"':
                stack.append(("str", '"'))
                out[i] = " "
                i += 1
            elif src[i] == "(" and mode[1] is not None:
                stack[-1] = ("code", mode[1] + 1)
                i += 1
            elif src[i] == ")" and mode[1] is not None:
                if mode[1] == 0:  # the end of an interpolation: back into the string
                    stack.pop()
                    out[i] = " "
                else:
                    stack[-1] = ("code", mode[1] - 1)
                i += 1
            else:
                i += 1
        else:
            delimiter = mode[1]
            if src.startswith("\\(", i):
                blank(i, i + 2)
                stack.append(("code", 0))
                i += 2
            elif src[i] == "\\":
                blank(i, min(i + 2, n))
                i += 2
            elif src.startswith(delimiter, i):
                blank(i, i + len(delimiter))
                stack.pop()
                i += len(delimiter)
            else:
                if src[i] != "\n":
                    out[i] = " "
                i += 1
    return "".join(out)


def matching(code: str, start: int, open_: str = "{", close: str = "}") -> int:
    """Index just past the bracket that closes the one at `start`."""
    depth = 0
    for k in range(start, len(code)):
        if code[k] == open_:
            depth += 1
        elif code[k] == close:
            depth -= 1
            if depth == 0:
                return k + 1
    return len(code)


def parse_platform_list(text: str) -> dict:
    """`iOS 17.4, macOS 14.4, *` → {"iOS": (17, 4), "macOS": (14, 4)}; `macOS, unavailable` → {"macOS": None}."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) >= 2 and parts[1] == "unavailable" and parts[0] in PLATFORMS:
        return {parts[0]: None}
    found = {}
    for part in parts:
        m = re.fullmatch(r"(iOS|macOS)\s+([\d.]+)", part)
        if m:
            found[m.group(1)] = parse_version(m.group(2))
    return found


@dataclass
class Scope:
    start: int
    end: int
    grants: dict  # platform -> version tuple (available from), or None (declared unavailable there)


DECLARATION = re.compile(r"\b(func|var|let|case|init|subscript|class|struct|enum|protocol|extension|typealias|actor)\b")


def declaration_end(code: str, pos: int) -> int:
    """From just after an attribute: the end of the declaration it marks (its `{ }` body, or its last line).
    Lines holding only attributes or modifiers belong to the declaration below them."""
    depth = 0
    for k in range(pos, len(code)):
        c = code[k]
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "{" and depth == 0:
            return matching(code, k)
        elif c == "\n" and depth == 0 and DECLARATION.search(code, pos, k):
            rest = code[k + 1:].lstrip(" \t")
            if not rest.startswith(("where", "->", "throws", "rethrows", "async")):
                return k
    return len(code)


def enclosing_block_end(code: str, pos: int) -> int:
    depth = 0
    for k in range(pos, len(code)):
        if code[k] == "{":
            depth += 1
        elif code[k] == "}":
            if depth == 0:
                return k
            depth -= 1
    return len(code)


def availability_scopes(code: str) -> list[Scope]:
    scopes: list[Scope] = []
    for m in re.finditer(r"@available\s*\(", code):
        close = matching(code, m.end() - 1, "(", ")")
        grants = parse_platform_list(code[m.end():close - 1])
        if grants:
            scopes.append(Scope(m.start(), declaration_end(code, close), grants))
    for m in re.finditer(r"\b(if|guard|while)\b([^{}\n]*?)#available\s*\(", code):
        close = matching(code, m.end() - 1, "(", ")")
        grants = parse_platform_list(code[m.end():close - 1])
        if not grants:
            continue
        if m.group(1) == "guard":
            else_ = re.compile(r"\belse\s*\{").search(code, close)
            if not else_:
                continue
            after = matching(code, else_.end() - 1)
            scopes.append(Scope(after, enclosing_block_end(code, after), grants))
        else:
            brace = code.find("{", close)
            if brace >= 0:
                scopes.append(Scope(brace, matching(code, brace), grants))
    return scopes


def compiled_for(code: str) -> list[tuple[int, int, set]]:
    """Regions of `#if` branches and the platforms each is compiled for (iOS, macOS): [(start, end, platforms)]."""
    def truth(condition: str, platform: str) -> bool:
        expr = condition
        expr = re.sub(r"\bos\(\s*(\w+)\s*\)", lambda m: str(m.group(1) == platform), expr)
        expr = re.sub(r"canImport\(\s*([\w.]+)\s*(?:,[^)]*)?\)",
                      lambda m: str({"UIKit": platform == "iOS", "AppKit": platform == "macOS"}.get(m.group(1), True)), expr)
        expr = re.sub(r"(targetEnvironment|swift|compiler|arch|hasFeature|hasAttribute)\([^)]*\)", "True", expr)
        expr = expr.replace("&&", " and ").replace("||", " or ").replace("!", " not ")
        expr = re.sub(r"\b(?!True\b|False\b|and\b|or\b|not\b)[A-Za-z_]\w*", "True", expr)
        try:
            return bool(eval(expr, {"__builtins__": {}}, {}))  # only True/False/and/or/not/parentheses remain
        except SyntaxError:
            return True

    regions = []
    stack: list[dict] = []  # each: {"start", "platforms so far taken", "active"}
    for m in re.finditer(r"^[ \t]*#(if|elseif|else|endif)\b([^\n]*)", code, re.M):
        kind, condition = m.group(1), m.group(2).strip()
        if kind == "if":
            active = {p for p in PLATFORMS if truth(condition, p)}
            stack.append({"start": m.end(), "taken": set(active), "active": active})
        elif kind in ("elseif", "else") and stack:
            top = stack[-1]
            regions.append((top["start"], m.start(), set(top["active"])))
            active = {p for p in PLATFORMS if p not in top["taken"] and (kind == "else" or truth(condition, p))}
            top.update(start=m.end(), active=active)
            top["taken"] |= active
        elif kind == "endif" and stack:
            top = stack.pop()
            regions.append((top["start"], m.start(), set(top["active"])))
    return regions


def imports(code: str) -> set:
    found = set(re.findall(r"^\s*(?:@\w+\s+)*import\s+(?:(?:struct|class|enum|protocol|func|var|let|typealias)\s+)?(\w+)", code, re.M))
    if "Foundation" in found or "CoreGraphics" in found or "UIKit" in found:
        found.add("FoundationApple")  # Apple's Foundation, which the FoundationApple stand-in stands in for
    return found


# ---------------------------------------------------------------------------------------------------- checks

def check_uses(path: Path, rows: list[Row], target: dict, shown: str) -> list[str]:
    src = path.read_text()
    code = blank_comments_and_strings(src)
    modules = imports(code)
    scopes = availability_scopes(code)
    regions = compiled_for(code)
    findings = []
    for row in rows:
        if row.module not in modules:
            continue
        strict = {p: v for p, v in row.need.items() if v is None or (v != "any" and v > target[p])}
        if not strict:
            continue
        for m in row.pattern().finditer(code):
            pos = m.start()
            line = code.count("\n", 0, pos) + 1
            platforms = set(PLATFORMS)
            for start, end, active in regions:
                if start <= pos < end:
                    platforms &= active
            problems = []
            for platform, need in strict.items():
                if platform not in platforms:
                    continue
                if need is None:
                    problems.append(f"is unavailable on {platform} (put it inside an #if that leaves {platform} out)")
                    continue
                granted = target[platform]
                for scope in scopes:
                    if scope.start <= pos < scope.end and scope.grants.get(platform) is not None:
                        granted = max(granted, scope.grants[platform])
                if granted < need:
                    problems.append(f"needs {platform} {show(need)}, this use is only guaranteed {platform} {show(granted)}")
            if problems:
                versions = ", ".join(f"{p} {show(v)}" for p, v in row.need.items() if v not in (None, "any"))
                hint = f" (wrap it in `if #available({versions}, *)` or mark the declaration `@available({versions}, *)`)" if versions else ""
                findings.append(f"{shown}:{line}: {row.symbol} " + "; ".join(problems) + hint)
    return findings


def check_stand_ins(stand_ins: Path, rows: list[Row]) -> list[str]:
    """Every row's declaration in its stand-in carries the row's availability (its own @available or its type's)."""
    findings = []
    for row in rows:
        folder = stand_ins / row.module
        files = sorted(folder.glob("*.swift"))
        if not files:
            findings.append(f"availability.tsv: {row.symbol}: no stand-in folder {folder}")
            continue
        name = row.name
        if row.match == "type":
            decl = re.compile(r"\b(?:class|struct|enum|protocol|typealias|actor|let|var)\s+" + re.escape(name) + r"\b")
        elif name == "init":
            label = row.symbol.split("(")[1].split(":")[0]
            decl = re.compile(r"\binit\??\s*(?:<[^>]*>)?\(\s*" + re.escape(label) + r"\b")
        else:
            decl = re.compile(r"\b(?:func|var|let|case)\s+" + re.escape(name) + r"\b")
        found = False
        for file in files:
            code = blank_comments_and_strings(file.read_text())
            scopes = availability_scopes(code)
            for m in decl.finditer(code):
                found = True
                line = code.count("\n", 0, m.start()) + 1
                for platform in PLATFORMS:
                    need = row.need[platform]
                    says = "any"
                    for scope in scopes:  # innermost last: declarations nest, attributes are found in order
                        if scope.start <= m.start() < scope.end and platform in scope.grants:
                            says = scope.grants[platform]
                    if says != need:
                        findings.append(f"{file.relative_to(stand_ins.parent.parent)}:{line}: {row.symbol} is declared "
                                        f"{platform} {show(says) if says != 'any' else 'without @available'}, "
                                        f"availability.tsv says {show(need) if need != 'any' else 'any'}")
        if not found:
            findings.append(f"availability.tsv: {row.symbol}: not declared in scripts/stand-ins/{row.module}/")
    return findings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=HERE.parent, help="the swift-app folder")
    parser.add_argument("--table", type=Path, default=None)
    parser.add_argument("--no-stand-ins", action="store_true", help="skip the stand-ins' @available check")
    parser.add_argument("files", nargs="*", type=Path, help="Swift files (default: Sources/ and PocketSDApp/)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    rows = load_table(args.table or root / "scripts" / "availability.tsv")
    target = deployment_target(root)
    files = args.files or sorted(p for d in ("Sources", "PocketSDApp") for p in (root / d).rglob("*.swift"))
    findings = []
    for path in files:
        try:
            shown = str(path.resolve().relative_to(root))
        except ValueError:
            shown = str(path)
        findings += check_uses(path, rows, target, shown)
    if not args.no_stand_ins:
        findings += check_stand_ins(root / "scripts" / "stand-ins", rows)
    for finding in findings:
        print(finding, file=sys.stderr)
    if findings:
        print(f"availability: {len(findings)} finding(s)", file=sys.stderr)
        return 1
    print(f"availability: {len(files)} Swift files against {len(rows)} APIs (deployment iOS {show(target['iOS'])}, "
          f"macOS {show(target['macOS'])}): every newer API is guarded; the stand-ins match the table")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
