#!/usr/bin/env python3
"""Runs a ser benchmark and its PyTorch peer side by side (same configuration and threads)
and prints one Markdown table row: ser, PyTorch, ratio, MFU. Used for the README's tables.

  /usr/bin/python3 tests/reference/bench_compare.py vit --model vit_small --img 224 --patch 16 \
      --batch 32 --threads 2 --runs 5

Each side reports the median of --runs timed steps after one warm-up step; the two programs
alternate `--rounds` times (default 1) and the medians of their medians are compared.
"""
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PEERS = {"vit": "bench_vit_peer.py", "step": "bench_step_peer.py"}


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in PEERS:
        sys.exit(f"usage: bench_compare.py {{{','.join(PEERS)}}} [options] [--rounds N]")
    what, args = sys.argv[1], sys.argv[2:]
    rounds = 1
    if "--rounds" in args:
        i = args.index("--rounds")
        rounds = int(args[i + 1])
        del args[i:i + 2]
    peer_args = []  # options only the peer takes (--autocast bf16: its best CPU setting)
    if "--autocast" in args:
        i = args.index("--autocast")
        peer_args = args[i:i + 2]
        del args[i:i + 2]
    ser_args = []  # options only ser takes (--precision bf16: its bf16 linear layers)
    if "--precision" in args:
        i = args.index("--precision")
        ser_args = args[i:i + 2]
        del args[i:i + 2]
    ser = os.environ.get("SER_BIN", os.path.join(ROOT, "build", "ser"))
    py = os.environ.get("SER_PYTHON", "/usr/bin/python3")
    ours, peer = [], []
    for _ in range(rounds):
        ours.append(run_json([ser, "bench", what, "--json"] + args + ser_args))
        peer.append(run_json([py, os.path.join(HERE, PEERS[what])] + args + peer_args))
    o = statistics.median(r["images_per_s"] for r in ours)
    p = statistics.median(r["images_per_s"] for r in peer)
    r0 = ours[0]
    if what == "step":
        loc = f" + {r0['local']} local of {r0['local_size']} px" if r0.get("local") else ""
        if r0.get("lpairs"):
            loc += f" + {r0['lpairs']} local SER pairs"
        pk = f" ({peer[0]['autocast']})" if peer[0].get("autocast", "none") != "none" else ""
        sp = f", ser {r0['precision']}" if r0.get("precision", "fp32") != "fp32" else ""
        print(f"| {r0['method']}{'+ser' if r0['ser'] else ''}{loc} | {r0['model']}/{r0['patch']} | "
              f"{r0['img']} | {r0['batch']} ({r0['n_eq']} eq) | {r0['threads']}{pk}{sp} | "
              f"{statistics.median(r['median_step_s'] for r in ours):.3f} s | "
              f"{statistics.median(r['median_step_s'] for r in peer):.3f} s | "
              f"{o / p:.2f}x |")
        return
    mfu = statistics.median(r["mfu"] for r in ours)
    print(f"| {r0['model']}/{r0['patch']} | {r0['img']} | {r0['batch']} | {r0['threads']} | "
          f"{o:.2f} | {p:.2f} | {o / p:.2f}x | {100 * mfu:.1f}% "
          f"({statistics.median(r['gflops'] for r in ours):.0f} of "
          f"{statistics.median(r['sgemm_peak_gflops'] for r in ours):.0f} GFLOP/s) |")


if __name__ == "__main__":
    main()
