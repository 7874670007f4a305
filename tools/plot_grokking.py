r"""Grokking curves from a run's metrics.jsonl: accuracy, adversarial accuracy and local
complexity against the (log) training step, as in Humayun et al. (ICML 2024), Figs. 1-3.

  python tools/plot_grokking.py WORKDIR [WORKDIR ...] --out docs/figures/grok.png \
      [--radius 0.5 ...] [--title "MNIST MLP" ...]

Top panel: train / test accuracy (probe "grok_accuracy", else the loop's eval/accuracy) and
adversarial accuracy (probe "adversarial") on a log-step axis. Bottom panel: the total local
complexity at training, test, random and decision-boundary points for one radius (probe
"local_complexity"), on its own axis. Several workdirs are drawn side by side (the same
workdir twice with two --radius values shows two radii); --radius and --title are given once
per panel column, or once for all.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_LC_KEY = re.compile(r"^lc_r([0-9.e+-]+)/(\w+)/total$")


def read_records(workdir) -> list[dict]:
  path = Path(workdir) / "metrics.jsonl"
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:  # A line cut by a crash or a run still writing.
      continue
  return records


def series(records, key):
  """(steps, values) of `key`, one value per step (the last written), steps sorted."""
  by_step = {r["step"]: r[key] for r in records if key in r and r[key] is not None}
  steps = sorted(by_step)
  return steps, [by_step[s] for s in steps]


def lc_radii(records) -> list[float]:
  radii = set()
  for r in records:
    for k in r:
      m = _LC_KEY.match(k)
      if m:
        radii.add(float(m.group(1)))
  return sorted(radii)


def _log_x(steps, values):
  # Step 0 cannot sit on a log axis: draw it at 0.5 (labelled in the axis title).
  return [max(s, 0.5) for s in steps], values


def plot_run(records, ax_acc, ax_lc, radius=None, title=None):
  colors = {"train": "tab:red", "test": "tab:blue", "random": "tab:gray",
            "boundary": "tab:purple", "adv": "tab:green"}
  for split in ("train", "test"):
    steps, vals = series(records, f"grok/{split}_accuracy")
    if not steps and split == "test":
      steps, vals = series(records, "eval/accuracy")
    if steps:
      ax_acc.plot(*_log_x(steps, vals), color=colors[split], label=f"{split} accuracy")
  steps, vals = series(records, "adv/test_accuracy")
  if steps:
    ax_acc.plot(*_log_x(steps, vals), color=colors["adv"], label="adversarial accuracy (PGD)")
  extra = sorted({k for r in records for k in r if k.startswith("adv/test_accuracy_eps")},
                 key=lambda k: -float(k[len("adv/test_accuracy_eps"):]))
  for i, key in enumerate(extra):  # Smaller attacks (probe_kwargs.adv_extra_eps), dashed.
    eps = float(key[len("adv/test_accuracy_eps"):])
    label = f"{eps * 255:.3g}/255" if abs(eps * 255 - round(eps * 255)) < 1e-3 else f"{eps:g}"
    steps, vals = series(records, key)
    ax_acc.plot(*_log_x(steps, vals), color=colors["adv"], ls=("--", ":", "-.")[i % 3],
                label=f"PGD accuracy, eps {label}")
  ax_acc.set_xscale("log")
  ax_acc.set_ylim(-0.02, 1.02)
  ax_acc.set_ylabel("accuracy")
  ax_acc.grid(alpha=0.3)
  ax_acc.legend(loc="upper left", fontsize=8)
  if title:
    ax_acc.set_title(title)
  radii = lc_radii(records)
  if radii:
    r = radius if radius is not None else radii[len(radii) // 2]
    if r not in radii:
      raise SystemExit(f"radius {r} not in the run's radii {radii}; pass --radius one of them.")
    for name in ("train", "test", "random", "boundary"):
      steps, vals = series(records, f"lc_r{r:g}/{name}/total")
      if steps:
        ax_lc.plot(*_log_x(steps, vals), color=colors[name], label=f"LC {name}")
    ax_lc.set_ylabel(f"local complexity (r = {r:g})")
    ax_lc.legend(loc="upper left", fontsize=8)
  ax_lc.set_xscale("log")
  ax_lc.set_xlabel("optimization steps (step 0 drawn at 0.5)")
  ax_lc.grid(alpha=0.3)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("workdirs", nargs="+")
  p.add_argument("--out", required=True, help="PNG file to write")
  p.add_argument("--radius", type=float, action="append", default=None,
                 help="LC radius to draw (once per workdir, or once for all)")
  p.add_argument("--title", action="append", default=None,
                 help="panel title (once per workdir)")
  p.add_argument("--dpi", type=int, default=90)
  args = p.parse_args(argv)
  n = len(args.workdirs)
  fig, axes = plt.subplots(2, n, figsize=(5.5 * n, 6), sharex="col", squeeze=False)
  for i, wd in enumerate(args.workdirs):
    title = args.title[i] if args.title and i < len(args.title) else Path(wd).name
    radius = None
    if args.radius:
      radius = args.radius[i] if i < len(args.radius) else args.radius[-1]
    plot_run(read_records(wd), axes[0, i], axes[1, i], radius, title)
  fig.tight_layout()
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(args.out, dpi=args.dpi)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
