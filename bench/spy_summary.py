"""Summarise a `py-spy record -f raw` profile: where the sampled time goes, by function.

    .venv/bin/python bench/spy_summary.py PROFILE.txt [--top 25] [--focus FUNC]

Prints the share of samples in which each function is on the stack (inclusive) and at the
top of it (self). With `py-spy record --gil` the samples are those of the thread holding the
GIL, so the shares say where the member's Python CPU goes.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter

FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^)]*?)(?::\d+)?\)$")


def parse(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            frames = []
            for fr in stack.split(";"):
                m = FRAME.match(fr)
                frames.append(f"{m['func']} ({m['file']})" if m else fr)
            stacks.append((frames, int(count)))
    return stacks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--focus", help="only stacks through this function (substring)")
    args = ap.parse_args(argv)
    stacks = parse(args.profile)
    if args.focus:
        stacks = [(s, n) for s, n in stacks if any(args.focus in f for f in s)]
    total = sum(n for _, n in stacks)
    incl: Counter = Counter()
    own: Counter = Counter()
    for frames, n in stacks:
        for f in set(frames):
            incl[f] += n
        own[frames[-1]] += n
    print(f"{total} samples{' through ' + args.focus if args.focus else ''}")
    print(f"\n{'inclusive':>9}  function")
    for f, n in incl.most_common(args.top):
        print(f"{100 * n / total:8.1f}%  {f}")
    print(f"\n{'self':>9}  function")
    for f, n in own.most_common(args.top):
        print(f"{100 * n / total:8.1f}%  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
