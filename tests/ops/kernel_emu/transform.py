"""Copies csrc/ and rewrites, in the CUDA sources (.cu, .cuh, .h), the constructs a host C++ compiler cannot
take as they are; everything else (kernel bodies, loaders, epilogues, launchers) is compiled unchanged.

  kernel<<<grid, block, smem, stream>>>(args)
      -> ::emu::launch("kernel", dim3(grid), dim3(block), smem, stream, __FILE__, __LINE__, [&] { kernel(args); })
  __shared__ __align__(16) T a[M][N], b[N];      (bounds may be any constant expression: [k == 2 ? M : 1])
      -> static char emu_shkey_a; auto& a = ::emu::shared<T[M][N]>(&emu_shkey_a, 16, "a"); (same for b)
  extern __shared__ T s[];   ->  T* s = ::emu::dynamic_shared<T>();
  asm volatile("mma.sync.aligned.m16n8k16... {%0,..}, ..;" : "+f"(d[0]), .. : "r"(a[0]), ..)
      -> ::emu::ptx::mma_sync_aligned_m16n8k16_...(__FILE__, __LINE__, {&(d[0]), ..}, {(a[0]), ..}, ..)
         (the first PTX operand is the destination; an instruction shim/emu_ptx.h lacks is an error here)
  __launch_bounds__(N) kernel(...) {   ->  the body starts with ::emu::launch_bounds(N, ...) (a launch check)

The build defines __CUDACC__ and __CUDA_ARCH__ (900), so code under `#if __CUDA_ARCH__ >= 800` takes its
device branch, as on the GPU. Every rewrite keeps the line count, so reports and sanitizer traces name the
lines of csrc/. Every rewrite is syntactic: the kernels' C++ itself compiles with g++ as it is (the float
`mma_k_tile` overload g++ once found ambiguous is gone; one template serves all three types).

    python tests/ops/kernel_emu/transform.py SRC_DIR OUT_DIR      # prints what it rewrote
"""
from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

SHIM = Path(__file__).resolve().parent / "shim"
CUDA_SUFFIXES = (".cu", ".cuh", ".h", ".hpp")


class TransformError(ValueError):
    """A construct the emulator cannot take (named with its file and line)."""


@dataclass
class Report:
    launches: int = 0
    shared: int = 0
    asm: int = 0
    bounds: int = 0

    def add(self, other: "Report") -> None:
        self.launches += other.launches
        self.shared += other.shared
        self.asm += other.asm
        self.bounds += other.bounds


def code_mask(text: str) -> bytearray:
    """1 where a character is code, 0 inside comments and string / character literals."""
    mask = bytearray(b"\x01") * len(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif c == '"' or (c == "'" and not (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_"))):
            if c == '"' and i > 0 and text[i - 1] == "R":  # raw string R"d( ... )d"
                k = text.index("(", i)
                end = ")" + text[i + 1:k] + '"'
                j = text.index(end, k) + len(end)
            else:
                j = i + 1
                while j < n and text[j] != c:
                    j += 2 if text[j] == "\\" else 1
                j += 1
        else:
            i += 1
            continue
        mask[i:j] = b"\x00" * (j - i)
        i = j
    return mask


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def match_forward(text: str, i: int, open_ch: str, close_ch: str, mask: bytearray) -> int:
    """Index of the bracket closing the one at i (which is open_ch)."""
    depth = 0
    for j in range(i, len(text)):
        if not mask[j]:
            continue
        if text[j] == open_ch:
            depth += 1
        elif text[j] == close_ch:
            depth -= 1
            if depth == 0:
                return j
    raise TransformError(f"line {line_of(text, i)}: unbalanced '{open_ch}'")


def split_top(s: str, sep: str = ",") -> list[str]:
    """Splits s at `sep` outside (), [], {} and string literals."""
    parts, depth, cur, i = [], 0, [], 0
    in_str = False
    while i < len(s):
        c = s[i]
        if in_str:
            cur.append(c)
            if c == "\\":
                cur.append(s[i + 1])
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
            cur.append(c)
        elif c in "([{":
            depth += 1
            cur.append(c)
        elif c in ")]}":
            depth -= 1
            cur.append(c)
        elif depth == 0 and s.startswith(sep, i) and not (sep == ":" and (s.startswith("::", i) or
                                                                          (i > 0 and s[i - 1] == ":"))):
            parts.append("".join(cur))
            cur = []
            i += len(sep)
            continue
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def one_line(replacement: str, original: str) -> str:
    """The replacement on one line, followed by as many newlines as the original span had."""
    return " ".join(replacement.split("\n")) + "\n" * original.count("\n")


# ---- kernel launches ----
def kernel_expression_start(text: str, end: int) -> int:
    """Start of `name<template args>` ending just before `end` (the <<<)."""
    j = end - 1
    while j >= 0 and text[j].isspace():
        j -= 1
    if text[j] == ">":
        depth = 0
        while j >= 0:
            if text[j] == ">":
                depth += 1
            elif text[j] == "<":
                depth -= 1
                if depth == 0:
                    break
            j -= 1
        j -= 1
    while j >= 0 and (text[j].isalnum() or text[j] in "_:"):
        j -= 1
    return j + 1


def rewrite_launches(text: str, rep: Report) -> str:
    mask = code_mask(text)
    out, pos = [], 0
    for m in re.finditer(r"<<<", text):
        i = m.start()
        if i < pos or not mask[i]:
            continue
        j = text.index(">>>", i)
        k = kernel_expression_start(text, i)
        kern = text[k:i].strip()
        cfg = [c.strip() for c in split_top(text[i + 3:j])]
        if len(cfg) < 2 or len(cfg) > 4:
            raise TransformError(f"line {line_of(text, i)}: launch configuration '{text[i:j + 3]}' not understood")
        a0 = j + 3
        while text[a0].isspace():
            a0 += 1
        a1 = match_forward(text, a0, "(", ")", mask)
        smem = cfg[2] if len(cfg) > 2 else "0"
        stream = cfg[3] if len(cfg) > 3 else "nullptr"
        name = kern.split("<")[0].strip()
        call = (f'::emu::launch("{kern}", dim3({cfg[0]}), dim3({cfg[1]}), {smem}, {stream}, __FILE__, __LINE__, '
                f'[&]() {{ {name}{kern[len(name):]}{text[a0:a1 + 1]}; }})')
        out.append(text[pos:k])
        out.append(one_line(call, text[k:a1 + 1]))
        pos = a1 + 1
        rep.launches += 1
    out.append(text[pos:])
    return "".join(out)


# ---- __shared__ ----
INITIALIZER = re.compile(r"(?<![=!<>])=(?!=)")  # `= value`, not the == (or <=, >=, !=) of an array bound


def rewrite_shared(text: str, rep: Report) -> str:
    mask = code_mask(text)
    out, pos = [], 0
    for m in re.finditer(r"\b__shared__\b", text):
        i = m.start()
        if i < pos or not mask[i]:
            continue
        end = text.index(";", i)
        start = i
        before = text[:i].rstrip()
        is_extern = before.endswith("extern")
        if is_extern:
            start = len(before) - len("extern")
        decl = text[i + len("__shared__"):end]
        align = "0"
        am = re.search(r"__align__\s*\(([^)]*)\)", decl)
        if am:
            align = am.group(1).strip()
            decl = decl[:am.start()] + " " + decl[am.end():]
        parts = split_top(decl)
        first = re.search(r"(\w+)\s*((?:\[[^\]]*\]\s*)*)$", parts[0].strip())
        if first is None:
            raise TransformError(f"line {line_of(text, i)}: __shared__ declaration '{text[i:end]}' not understood")
        typ = parts[0].strip()[:first.start()].strip()
        if not typ or "*" in typ or INITIALIZER.search(decl):
            raise TransformError(f"line {line_of(text, i)}: __shared__ declaration '{text[i:end]}' not supported")
        stmts = []
        for k, part in enumerate(parts):
            dm = re.fullmatch(r"\s*(\w+)\s*((?:\[[^\]]*\]\s*)*)", part if k else first.group(0))
            if dm is None:
                raise TransformError(f"line {line_of(text, i)}: __shared__ declarator '{part}' not understood")
            name, dims = dm.group(1), re.sub(r"\s+", "", dm.group(2))
            if is_extern:
                if dims != "[]":
                    raise TransformError(f"line {line_of(text, i)}: extern __shared__ {name} must be an array []")
                stmts.append(f"{typ}* {name} = ::emu::dynamic_shared<{typ}>();")
            else:
                stmts.append(f"static char emu_shkey_{name}; auto& {name} = ::emu::shared<{typ}{dims}>"
                             f"(&emu_shkey_{name}, {align}, \"{name}\");")
            rep.shared += 1
        out.append(text[pos:start])
        out.append(one_line(" ".join(stmts), text[start:end + 1]))
        pos = end + 1
    out.append(text[pos:])
    return "".join(out)


# ---- inline PTX ----
def supported_ptx() -> set[str]:
    return set(re.findall(r"inline void (\w+)\(const char\*", (SHIM / "emu_ptx.h").read_text()))


def c_string_value(literals: str) -> str:
    """The value of adjacent string literals ("a" "b\\n")."""
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"', literals)
    return "".join(bytes(p, "utf-8").decode("unicode_escape") for p in parts)


def rewrite_asm(text: str, rep: Report, path: str) -> str:
    mask = code_mask(text)
    out, pos = [], 0
    known = None
    for m in re.finditer(r"\basm\b(\s+(?:volatile|__volatile__))?\s*\(", text):
        i = m.start()
        if i < pos or not mask[i]:
            continue
        p0 = m.end() - 1
        p1 = match_forward(text, p0, "(", ")", mask)
        semi = p1 + 1
        while text[semi].isspace():
            semi += 1
        if text[semi] != ";":
            raise TransformError(f"{path}:{line_of(text, i)}: asm statement not followed by ';'")
        sections = split_top(text[p0 + 1:p1], ":")
        template = c_string_value(sections[0])
        outs = [o.strip() for o in split_top(sections[1])] if len(sections) > 1 and sections[1].strip() else []
        ins = [o.strip() for o in split_top(sections[2])] if len(sections) > 2 and sections[2].strip() else []
        operands = []  # (constraint, expression) in %-number order
        for o in outs + ins:
            om = re.fullmatch(r'"([^"]*)"\s*\((.*)\)', o, re.S)
            if om is None:
                raise TransformError(f"{path}:{line_of(text, i)}: asm operand '{o}' not understood")
            operands.append((om.group(1), om.group(2).strip()))
        body = template.strip().rstrip(";").strip()
        if ";" in body or "\n" in body:
            raise TransformError(f"{path}:{line_of(text, i)}: asm with several instructions is not emulated: {body!r}")
        opcode, _, args = body.partition(" ")
        fn = opcode.replace(".", "_")
        known = supported_ptx() if known is None else known
        if fn not in known:
            raise TransformError(f"{path}:{line_of(text, i)}: PTX instruction '{opcode}' is not emulated; add "
                                 f"{fn}() to tests/ops/kernel_emu/shim/emu_ptx.h")
        call_args = []
        for position, ptx_op in enumerate(split_top(args)):
            ptx_op = ptx_op.strip()
            refs = re.findall(r"%(\d+)", ptx_op)
            if not refs or not re.fullmatch(r"\{?\s*%\d+(\s*,\s*%\d+)*\s*\}?", ptx_op):
                raise TransformError(f"{path}:{line_of(text, i)}: PTX operand '{ptx_op}' is not emulated")
            exprs = []
            for r in refs:
                constraint, expr = operands[int(r)]
                if position == 0:
                    if not constraint.startswith(("=", "+")):
                        raise TransformError(f"{path}:{line_of(text, i)}: destination %{r} is not an output")
                    exprs.append(f"&({expr})")
                else:
                    if constraint.startswith("="):
                        raise TransformError(f"{path}:{line_of(text, i)}: %{r} read but declared write-only")
                    exprs.append(f"({expr})")
            call_args.append("{" + ", ".join(exprs) + "}" if ptx_op.startswith("{") else exprs[0])
        call = f"::emu::ptx::{fn}(__FILE__, __LINE__, {', '.join(call_args)});"
        out.append(text[pos:i])
        out.append(one_line(call, text[i:semi + 1]))
        pos = semi + 1
        rep.asm += 1
    out.append(text[pos:])
    return "".join(out)


# ---- __launch_bounds__ ----
def rewrite_launch_bounds(text: str, rep: Report) -> str:
    mask = code_mask(text)
    inserts = []
    for m in re.finditer(r"\b__launch_bounds__\s*\(", text):
        i = m.start()
        if not mask[i] or text[text.rfind("\n", 0, i) + 1:i].lstrip().startswith("#"):
            continue
        b1 = match_forward(text, m.end() - 1, "(", ")", mask)
        bound = split_top(text[m.end():b1])[0].strip()
        params = text.index("(", b1 + 1)
        p1 = match_forward(text, params, "(", ")", mask)
        brace = p1 + 1
        while brace < len(text) and text[brace] != "{":
            if text[brace] == ";":  # a declaration, not a definition
                brace = -1
                break
            brace += 1
        if brace < 0:
            continue
        inserts.append((brace + 1, f" ::emu::launch_bounds(static_cast<long>({bound}), __FILE__, __LINE__);"))
        rep.bounds += 1
    for at, s in reversed(inserts):
        text = text[:at] + s + text[at:]
    return text


def transform_text(text: str, path: str = "<text>") -> tuple[str, Report]:
    rep = Report()
    try:
        text = rewrite_asm(text, rep, path)
        text = rewrite_launches(text, rep)
        text = rewrite_shared(text, rep)
        text = rewrite_launch_bounds(text, rep)
    except TransformError as e:
        msg = str(e)
        raise TransformError(msg if msg.startswith(path) else f"{path}: {msg}") from None
    return text, rep


def transform_tree(src: Path, dst: Path) -> list[str]:
    """Copies src to dst (replacing it) with the CUDA files rewritten; returns one log line per file changed."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    log, total = [], Report()
    for p in sorted(dst.rglob("*")):
        if p.suffix not in CUDA_SUFFIXES or not p.is_file():
            continue
        rel = p.relative_to(dst).as_posix()
        before = p.read_text()
        after, rep = transform_text(before, rel)
        if after != before:
            p.write_text(after)
            log.append(f"{rel}: {rep.launches} launches, {rep.shared} __shared__, {rep.asm} asm, "
                       f"{rep.bounds} __launch_bounds__")
        total.add(rep)
    log.append(f"total: {total.launches} launches, {total.shared} __shared__, {total.asm} asm, "
               f"{total.bounds} __launch_bounds__")
    return log


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print("\n".join(transform_tree(Path(sys.argv[1]), Path(sys.argv[2]))))
