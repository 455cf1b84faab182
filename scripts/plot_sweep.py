"""Plot decode throughput against batch size from `localllm bench sweep --json-out` files, each beside its roofline.

    python scripts/plot_sweep.py a.json [b.json ...] -o assets/decode-vs-batch.png

One colour per file (model): measured tokens/s as a solid line with markers, the roofline as a dashed line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import matplotlib
except ImportError:
    sys.exit("plot_sweep.py needs matplotlib, which localllm does not depend on: pip install matplotlib")
matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402


def load(path: str) -> dict:
    with open(path) as f:
        sweep = json.load(f)
    sweep["points"] = sorted(sweep["points"], key=lambda p: p["batch_size"])
    if not sweep["points"]:
        sys.exit(f"{path} has no points")
    return sweep


def title(sweeps: list[dict], device_name: str | None) -> str:
    # Bandwidth is measured per run, so files from one card differ a little: group by device and dtype, and show
    # the range, so that a plot mixing cards does not mislead.
    setups: dict[str, list[float]] = {}
    for s in sweeps:
        setups.setdefault(f"{device_name or s['device']}, {s['dtype']}", []).append(s["copy_bandwidth_gb_s"])
    parts = [f"{setup}, measured copy bandwidth {min(bw):,.0f}" + (f"-{max(bw):,.0f}" if max(bw) - min(bw) >= 1 else "")
             + " GB/s" for setup, bw in setups.items()]
    return "Decode throughput vs batch size\n" + "; ".join(parts)


def plot(sweeps: list[dict], out: str, device_name: str | None) -> None:
    fig, ax = plt.subplots(figsize=(10, 6.25), dpi=100)  # 1000 x 625 px
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    batch_sizes: set[int] = set()
    for i, sweep in enumerate(sweeps):
        color = colors[i % len(colors)]
        xs = [p["batch_size"] for p in sweep["points"]]
        batch_sizes.update(xs)
        ax.plot(xs, [p["decode_tokens_per_s"] for p in sweep["points"]], "-o", color=color, linewidth=2,
                markersize=6, label=f"{sweep['model']} measured")
        ax.plot(xs, [p["roofline_tokens_per_s"] for p in sweep["points"]], "--", color=color, linewidth=1.5,
                label=f"{sweep['model']} roofline")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted(batch_sizes))  # the measured batch sizes, written as plain numbers
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:,.0f}"))
    ax.set_xlabel("batch size (sequences decoding together)", fontsize=12)
    ax.set_ylabel("decode tokens/s (all sequences)", fontsize=12)
    ax.set_title(title(sweeps, device_name), fontsize=13)
    ax.tick_params(labelsize=11)
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", axis="y", alpha=0.15)
    ax.legend(fontsize=10, loc="upper left")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="JSON files written by `localllm bench sweep --json-out`")
    parser.add_argument("-o", "--output", default="assets/decode-vs-batch.png")
    parser.add_argument("--device-name", help="what to call the device in the title (the JSON says only 'cuda')")
    args = parser.parse_args()
    plot([load(f) for f in args.files], args.output, args.device_name)


if __name__ == "__main__":
    main()
