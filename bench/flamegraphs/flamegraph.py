#!/usr/bin/env python3
"""Folds `perf script` output into stacks and draws them as a flame graph SVG.

    perf script -i perf.data | python3 flamegraph.py "title" > out.svg

Widths are sample counts (CPU time of the recorded process); each box's tooltip gives the
function, its samples and its share. Frames below the thread's entry are cut at tokio's and
std's thread starts so the graph shows fieldsync's work, not runtime plumbing.
"""
import html
import re
import sys
from collections import defaultdict


def fold(lines):
    stacks = defaultdict(int)
    frames, comm = [], None
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if frames:
                stacks[(comm,) + tuple(reversed(frames))] += 1
            frames, comm = [], None
            continue
        if not line.startswith((" ", "\t")):
            comm = line.split()[0]
            continue
        parts = line.strip().split(None, 1)
        if len(parts) < 2:
            continue
        sym = parts[1]
        sym = re.sub(r"\s+\(.*\)$", "", sym)  # drop "(/path/to/dso)"
        sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
        sym = re.sub(r"::h[0-9a-f]{16}$", "", sym)  # rust hash suffix
        frames.append(sym)
    if frames:
        stacks[(comm,) + tuple(reversed(frames))] += 1
    return stacks


def build(stacks):
    root = {"n": 0, "c": {}}
    for st, n in stacks.items():
        node = root
        node["n"] += n
        for f in st:
            node = node["c"].setdefault(f, {"n": 0, "c": {}})
            node["n"] += n
    return root


def color(name):
    h = sum(ord(c) for c in name) % 60
    if "sled" in name:
        return f"rgb(80,{120 + h},{200})"
    if "fieldsync" in name:
        return f"rgb(230,{100 + h},40)"
    if "zstd" in name or "rmp" in name or "serde" in name:
        return f"rgb(200,{160 + h // 2},60)"
    if "[k]" in name or name.startswith(("__", "entry_SYSCALL", "do_")):
        return f"rgb(180,180,{120 + h})"
    return f"rgb(220,{60 + h},60)"


def main():
    title = sys.argv[1] if len(sys.argv) > 1 else "flame graph"
    root = build(fold(sys.stdin))
    total = max(root["n"], 1)
    width, row = 1400, 16
    rects = []

    def walk(node, name, x, depth):
        w = node["n"] / total * (width - 20)
        if w < 0.3:
            return
        rects.append((x, depth, w, name, node["n"]))
        cx = x
        for cname, child in sorted(node["c"].items()):
            walk(child, cname, cx, depth + 1)
            cx += child["n"] / total * (width - 20)

    walk(root, "all", 10, 0)
    depth = max(d for _, d, _, _, _ in rects) + 1
    height = depth * row + 60
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="11">',
        f'<rect width="100%" height="100%" fill="#fdfdf5"/>',
        f'<text x="10" y="20" font-size="14">{html.escape(title)} ({total} samples)</text>',
    ]
    for x, d, w, name, n in rects:
        y = height - 20 - (d + 1) * row
        label = html.escape(name)
        tip = f"{label} ({n} samples, {100 * n / total:.1f}%)"
        out.append(
            f'<g><title>{tip}</title><rect x="{x:.1f}" y="{y}" width="{w:.1f}" '
            f'height="{row - 1}" fill="{color(name)}" rx="2"/>'
        )
        chars = int(w / 7)
        if chars >= 3:
            text = name if len(name) <= chars else name[: chars - 2] + ".."
            out.append(f'<text x="{x + 2:.1f}" y="{y + 11}">{html.escape(text)}</text>')
        out.append("</g>")
    out.append("</svg>")
    print("\n".join(out))


if __name__ == "__main__":
    main()
