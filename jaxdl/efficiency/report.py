"""Per-layer memory / receptive-field table and patch-based savings of a registered CNN.

  python -m jaxdl.efficiency.report --model mobilenetv2_035 --resolution 144 --split 4 \
      --patches 4
  python -m jaxdl.efficiency.report --config configs/tiny_patch_inference.py:mcunet_in3_rd

Prints, for every layer, its kernel/stride, output shape, receptive field and activation
memory layer by layer and patch by patch (int8 unless --dtype), then the peaks, the saving,
the MAC overhead of the halos and XLA's measured memory of the compiled full and patch-based
forward passes (float32, on the default JAX device; --no-measure skips compiling).
`--redistribute` applies MCUNetV2's receptive-field redistribution first
(`jaxdl.efficiency.redistribute`).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxdl import errors
from jaxdl.efficiency import graph as G
from jaxdl.efficiency import memory as M
from jaxdl.efficiency import patch_inference as P
from jaxdl.efficiency import receptive_field as R
from jaxdl.efficiency.redistribute import Redistribution, redistribute


def abstract_variables(model, input_shape):
  """Variable shapes of `model` (no memory allocated): enough for every analysis here."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape)))
  return {k: v for k, v in shapes.items() if k in ("params", "batch_stats")}


def analyze(model, variables, input_shape: Sequence[int], *, split: int,
            num_patches: int | Sequence[int], dtype="int8", inplace=True,
            input_resident=False, measure=True, name: str | None = None) -> dict:
  """Everything the report prints, as a dict (also used by tools/bench_patch.py)."""
  g = G.trace(model, variables, input_shape)
  plan = P.make_plan(g, split, num_patches)
  full = M.layer_memory(g, dtype=dtype, inplace=inplace)
  patched = M.plan_memory(plan, dtype=dtype, inplace=inplace, input_resident=input_resident)
  macs = P.stage_macs(plan)
  fields = {r.index: r for r in R.layer_fields(g)}
  rf_in = plan.ranges[g.input]
  out = {"model": name or g.model_name, "input_shape": tuple(input_shape), "split": split,
         "blocks": plan.blocks, "num_patches": plan.num_patches, "patch": plan.patch,
         "stage_shape": plan.stage_shape, "input_patch": (rf_in[0].length, rf_in[1].length),
         "dtype": dtype, "full": full, "patched": patched, "fields": fields, "macs": macs,
         "ratio": full["peak_bytes"] / patched["peak_bytes"],
         "mac_overhead": macs["total_patched"] / macs["total_full"] - 1.0}
  if measure:
    mf = M.measured_memory(model, variables, input_shape)
    mp = M.measured_memory(model, variables, input_shape, split=split, num_patches=num_patches)
    f32_full = M.layer_memory(g, dtype="float32", inplace=False)["peak_bytes"]
    f32_patch = M.plan_memory(plan, dtype="float32", inplace=False,
                              input_resident=input_resident)["peak_bytes"]
    out["measured"] = {"full": mf, "patched": mp, "ratio": mf["temp_bytes"] / mp["temp_bytes"],
                       "computed_f32_full": f32_full, "computed_f32_patched": f32_patch}
  return out


def _shape(s):
  return "x".join(str(d) for d in s[1:])


def format_report(r: dict) -> str:
  kb = lambda b: f"{b / 1024:.1f}"
  nh, nw = r["num_patches"]
  blocks = r["blocks"]
  split = r["split"]
  first = blocks[split] if split < len(blocks) else "the head"
  lines = [
      f"model {r['model']}, input {_shape((0,) + tuple(r['input_shape'][1:]))} "
      f"(batch {r['input_shape'][0]}), {r['dtype']} activations",
      f"split {split}: stem + blocks[:{split}] patch by patch, {first} onward layer by layer; "
      f"{nh}x{nw} patches of {r['patch'][0]}x{r['patch'][1]} at the "
      f"{r['stage_shape'][0]}x{r['stage_shape'][1]} stage output; input patch "
      f"{r['input_patch'][0]}x{r['input_patch'][1]} (with halo)",
      "",
      f"{'#':>3} {'layer':<24} {'kind':<9} {'k':>3} {'s':>2} {'out shape':<12} {'RF':>4} "
      f"{'layer kB':>9} {'patch kB':>9}",
  ]
  patched = {row["index"]: row for row in r["patched"]["per_layer"]}
  for i, row in enumerate(r["full"]["per_layer"]):
    f = r["fields"].get(row["index"])
    p = patched.get(row["index"])
    k = f"{f.kernel[0]}" if f else "-"
    s = f"{f.stride[0]}" if f else "-"
    rf = f"{f.rf[0]}" if f else "-"
    pkb = (kb(p["bytes"]) + ("*" if p["stage"] == "patch" else " ")) if p else "-"
    lines.append(f"{i:>3} {row['name'][:24]:<24} {row['kind']:<9} {k:>3} {s:>2} "
                 f"{_shape(row['out_shape']):<12} {rf:>4} {kb(row['bytes']):>9} {pkb:>9}")
  full, pat, macs = r["full"], r["patched"], r["macs"]
  lines += [
      "(* = per patch, including the stage output buffer being assembled)",
      "",
      f"peak layer by layer: {kb(full['peak_bytes'])} kB at {full['peak_layer']}",
      f"peak patch-based:    {kb(pat['peak_bytes'])} kB at {pat['peak_layer']} "
      f"({pat['peak_stage']} stage; patch stage {kb(pat['patch_peak_bytes'])} kB incl. "
      f"{kb(pat['stage_output_bytes'])} kB stage output, per-layer stage "
      f"{kb(pat['layer_peak_bytes'])} kB)",
      f"saving: {r['ratio']:.2f}x smaller peak",
      f"MACs: {macs['total_full'] / 1e6:.1f}M layer by layer, {macs['total_patched'] / 1e6:.1f}M "
      f"patch-based ({100 * r['mac_overhead']:+.1f}% from overlapping halos; patch stage "
      f"{macs['stage_full'] / 1e6:.1f}M -> {macs['stage_patched'] / 1e6:.1f}M)",
  ]
  if "measured" in r:
    m = r["measured"]
    lines += [
        f"measured (XLA memory_analysis, {m['full']['device']}, float32): temp "
        f"{kb(m['full']['temp_bytes'])} kB full vs {kb(m['patched']['temp_bytes'])} kB "
        f"patch-based ({m['ratio']:.2f}x); computed float32 without in-place tricks: "
        f"{kb(m['computed_f32_full'])} kB vs {kb(m['computed_f32_patched'])} kB "
        f"({m['computed_f32_full'] / m['computed_f32_patched']:.2f}x); arguments "
        f"(parameters + image) {kb(m['full']['argument_bytes'])} kB in both",
    ]
  return "\n".join(lines)


def load_config(spec: str):
  """`path.py[:arg]` -> the ConfigDict of its get_config(arg)."""
  path, _, arg = spec.partition(":")
  s = importlib.util.spec_from_file_location("_jaxdl_report_config", path)
  if s is None:
    raise errors.ConfigError(f"cannot load config file {path!r}: give a path to a .py file.")
  mod = importlib.util.module_from_spec(s)
  s.loader.exec_module(mod)
  return mod.get_config(arg or None)


def build(args):
  """The model, variables, input shape and split that the arguments describe."""
  from jaxdl import models
  overrides = {"num_classes": args.num_classes} if args.num_classes else {}
  model = models.create(args.model, **overrides)
  split = args.split
  if args.redistribute:
    settings = Redistribution(patch_kernel=args.patch_kernel, move_blocks=args.move_blocks,
                              later_kernel=args.later_kernel or None,
                              later_blocks=args.later_blocks)
    model, split = redistribute(model, split, settings)
  shape = (args.batch, args.resolution, args.resolution, 3)
  return model, abstract_variables(model, shape), shape, split


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m jaxdl.efficiency.report", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", help="configs/X.py[:variant] whose fields set the defaults")
  p.add_argument("--model", default="mobilenetv2_035")
  p.add_argument("--resolution", type=int, default=144)
  p.add_argument("--split", type=int, default=4, help="first block run layer by layer")
  p.add_argument("--patches", type=int, default=4, help="n for an n x n patch grid")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--num-classes", type=int, default=0, help="0: the model's default")
  p.add_argument("--dtype", default="int8", help="activation storage: int8, float32, ...")
  p.add_argument("--no-inplace", action="store_true",
                 help="no in-place depthwise / fused residual adds in the computed memory")
  p.add_argument("--input-resident", action="store_true",
                 help="keep the whole input image in memory during the patch stage")
  p.add_argument("--no-measure", action="store_true", help="skip XLA's memory analysis")
  p.add_argument("--redistribute", action="store_true",
                 help="apply MCUNetV2 receptive-field redistribution first")
  p.add_argument("--patch-kernel", type=int, default=3)
  p.add_argument("--move-blocks", type=int, default=1)
  p.add_argument("--later-kernel", type=int, default=5)
  p.add_argument("--later-blocks", type=int, default=2)
  p.add_argument("--plot", help="write the memory-per-layer figure to this file")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  p = parser()
  args = p.parse_args(argv)
  try:
    if args.config:
      cfg = load_config(args.config)
      keys = {a.dest for a in p._actions}
      given = {a.dest for a in p._actions if any(o in (argv or sys.argv[1:])
                                                 for o in a.option_strings)}
      for k, v in cfg.items():
        k = k.replace("-", "_")
        if k not in keys:
          raise errors.ConfigError(f"config field {k!r} is not a report option; options are: "
                                   f"{', '.join(sorted(keys - {'config', 'help'}))}.")
        if k not in given:
          setattr(args, k, v)
    model, variables, shape, split = build(args)
    r = analyze(model, variables, shape, split=split, num_patches=args.patches,
                dtype=args.dtype, inplace=not args.no_inplace,
                input_resident=args.input_resident, measure=not args.no_measure,
                name=args.model + (" (redistributed)" if args.redistribute else ""))
  except errors.UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_report(r))
  if args.plot:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ax = M.plot_memory(r["patched"], baseline=r["full"],
                       title=f"{args.model} @ {args.resolution}, split {split}, "
                             f"{args.patches}x{args.patches} patches ({args.dtype})")
    ax.figure.tight_layout()
    ax.figure.savefig(args.plot, dpi=120)
    plt.close(ax.figure)
  return 0


if __name__ == "__main__":
  sys.exit(main())
