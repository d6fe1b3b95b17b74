"""Draws the plots of BENCHMARKS.md's "How cost grows" from bench/plots/growth.json, which
`weir-bench run` writes; bench/run.sh runs this after it. Needs matplotlib (run.sh installs it)."""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plots = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/plots")
data = json.loads((plots / "growth.json").read_text())


def save(fig, name):
    fig.tight_layout()
    fig.savefig(plots / name, dpi=110)
    plt.close(fig)


# Intake and p99 against connections.
sw = data["sweep"]
conns = sw["connections"]
fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
for key, label in [("limit", "limit (bare axum)"), ("memory", "memory queue"), ("disk", "disk spool")]:
    a.plot(conns, [r["req_per_s"] for r in sw[key]], marker="o", label=label)
    b.plot(conns, [r["p99_us"] / 1000 for r in sw[key]], marker="o", label=label)
for ax, title, unit in [(a, "throughput", "requests/s"), (b, "latency p99", "ms")]:
    ax.set_xscale("log", base=2)
    ax.set_xticks(conns, [str(c) for c in conns])
    ax.set_xlabel("connections")
    ax.set_ylabel(unit)
    ax.set_title(f"1-row JSON intake: {title}")
    ax.grid(alpha=0.3)
b.set_yscale("log")
a.legend()
save(fig, "connections.png")

# Recovery time against backlog.
rec = data["recovery"]
rows = [p[0] for p in rec["points"]]
ms = [p[1] for p in rec["points"]]
fig, ax = plt.subplots(figsize=(5.5, 3.8))
ax.plot(rows, ms, marker="o", label="weir: spawn to /healthz after SIGKILL")
ax.plot(rows, [r / 1e6 * 1000 for r in rows], linestyle="--", label="target: 1 s per million rows")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("rows queued in the disk spool")
ax.set_ylabel("ms")
ax.set_title("Disk spool recovery against backlog")
ax.grid(alpha=0.3)
ax.legend()
save(fig, "recovery.png")

# Delivery run time against batch size.
dl = data["delivery"]
rows = [d["rows"] for d in dl]
fig, ax = plt.subplots(figsize=(5.5, 3.8))
ax.plot(rows, [d["done_ms"] for d in dl], marker="o", label="whole run until DONE")
ax.plot(rows, [d["upload_ms"] for d in dl], marker="o", label="CSV build + upload")
# CPU time comes in clock ticks (10 ms): a run shorter than one shows as 0 and is left out.
cpu = [(d["rows"], d["upload_cpu_ms"]) for d in dl if d["upload_cpu_ms"] > 0]
ax.plot([r for r, _ in cpu], [c for _, c in cpu], marker="o", label="weir's CPU in build + upload")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("rows in the batch")
ax.set_ylabel("ms")
ax.set_title("Delivery against batch size")
ax.grid(alpha=0.3)
ax.legend()
save(fig, "delivery.png")

# Memory per row against row width.
wd = data["widths"]
fields = [w["fields"] for w in wd]
fig, ax = plt.subplots(figsize=(5.5, 3.8))
ax.plot(fields, [w["raw_per_row"] for w in wd], marker="o", label="raw payload (JSON text)")
ax.plot(fields, [w["rss_per_row"] for w in wd], marker="o", label="weir: RSS above idle")
ax.plot(fields, [1.2 * w["raw_per_row"] for w in wd], linestyle="--", label="target: 1.2× raw")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xticks(fields, [str(f) for f in fields])
ax.set_xlabel("fields per row")
ax.set_ylabel("bytes per queued row")
ax.set_title("Memory queue: memory per row against width")
ax.grid(alpha=0.3)
ax.legend()
save(fig, "width.png")
print(f"plots written to {plots}")
