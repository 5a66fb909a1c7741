#!/usr/bin/env python3
"""Per-layer A/B timing of keel builds (or settings), run in alternation.

On a shared machine the time of a whole pass moves by 10-30% from one minute to the next, more
than most kernel changes gain. Running the candidates in turn, round after round, lets the
noise hit each alike, and comparing layer by layer shows it: a layer whose code did not
change should come out equal.

Each command is run with KEEL_TRACE=1 and must print keel's trace lines (`keel bench vgg16`
does, one block per pass); the first pass of each run is the warm-up and is dropped. Prints
each layer's median over every timed pass of every round, and their sum.

    python3 scripts/layer_ab.py 12 \\
        old="/tmp/keel-old --threads 2 bench vgg16 --weights W --input 240x240 --batch 1" \\
        new="target/release/keel --threads 2 bench vgg16 --weights W --input 240x240 --batch 1"
"""

import os
import re
import statistics
import subprocess
import sys

TRACE = re.compile(r"\[trace\] (\S+)\s.*?([\d.]+) ms")


def passes(stderr):
    """The trace's passes, each a list of (layer, ms); a pass starts at the input layer."""
    out = []
    for line in stderr.splitlines():
        m = TRACE.match(line)
        if not m:
            continue
        if m.group(1) == "input_1":
            out.append([])
        if out:
            out[-1].append((m.group(1), float(m.group(2))))
    return out


def main():
    if len(sys.argv) < 3 or not sys.argv[1].isdigit():
        sys.exit(__doc__)
    rounds = int(sys.argv[1])
    runs = [arg.split("=", 1) for arg in sys.argv[2:]]
    if any(len(r) != 2 for r in runs):
        sys.exit("each candidate is label=command")
    times = {label: {} for label, _ in runs}
    order = []
    env = dict(os.environ, KEEL_TRACE="1")
    for _ in range(rounds):
        for label, cmd in runs:
            p = subprocess.run(cmd, shell=True, env=env, capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"{label}: exit {p.returncode}\n{p.stderr[-2000:]}")
            for one in passes(p.stderr)[1:]:
                for layer, ms in one:
                    if layer == "input_1":
                        continue
                    if layer not in order:
                        order.append(layer)
                    times[label].setdefault(layer, []).append(ms)
    labels = [label for label, _ in runs]
    print(f"{'layer':<20}" + "".join(f"{label:>12}" for label in labels))
    total = dict.fromkeys(labels, 0.0)
    for layer in order:
        row = f"{layer:<20}"
        for label in labels:
            ms = statistics.median(times[label].get(layer, [float("nan")]))
            total[label] += ms
            row += f"{ms:12.2f}"
        print(row)
    print(f"{'sum':<20}" + "".join(f"{total[label]:12.2f}" for label in labels))


if __name__ == "__main__":
    main()
