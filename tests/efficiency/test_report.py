"""The report CLI and receptive-field redistribution."""

import re

from jaxdl import models
from jaxdl.efficiency import Redistribution, activation_memory, mac_overhead, redistribute
from jaxdl.efficiency import report
from jaxdl.efficiency.redistribute import redistribute_lists


def test_report_prints_table_and_savings(capsys):
  rc = report.main(["--model", "mcunet_in0", "--resolution", "48", "--split", "5",
                    "--patches", "3", "--no-measure"])
  out = capsys.readouterr().out
  assert rc == 0
  model = models.create("mcunet_in0")
  v = report.abstract_variables(model, (1, 48, 48, 3))
  full = activation_memory(model, v, (1, 48, 48, 3))
  patched = activation_memory(model, v, (1, 48, 48, 3), split=5, num_patches=3)
  assert f"peak layer by layer: {full['peak_bytes'] / 1024:.1f} kB" in out
  assert f"saving: {full['peak_bytes'] / patched['peak_bytes']:.2f}x" in out
  assert "3x3 patches of 2x2 at the 6x6 stage output" in out
  rows = [l for l in out.splitlines() if re.match(r"\s*\d+ (conv|blocks|reduce|classifier)", l)]
  assert len(rows) == len(full["per_layer"])
  assert "blocks_5_0/conv_dw" in out and "*" in rows[0] and "*" not in rows[-1]


def test_report_config_variant_and_errors(capsys, repo_root):
  cfg = str(repo_root / "configs" / "tiny_patch_inference.py")
  assert report.main(["--config", cfg + ":runlocal", "--no-measure"]) == 0
  assert "split 5" in capsys.readouterr().out
  assert report.main(["--model", "mcunet_in0", "--resolution", "48", "--split", "99",
                      "--no-measure"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: split=99 is out of range") and err.count("\n") == 1


def test_redistribution_lists():
  lists, split = redistribute_lists((3, 5, 7, 3, 7, 5), (1, 6, 6, 6, 6, 6),
                                    (16, 24, 24, 24, 32, 32), (1, 2, 1, 1, 2, 1), split=4,
                                    settings=Redistribution(3, 2, 7, 2))
  # Patch stage: kernels <= 3, the two residual 24-channel blocks moved after the first
  # per-layer block (stride 1, its channels), whose kernel and the next grow to 7.
  assert split == 2
  assert lists["kernel_sizes"] == (3, 3, 7, 7, 7, 5)
  assert lists["channels"] == (16, 24, 32, 32, 32, 32)
  assert lists["strides"] == (1, 2, 2, 1, 1, 1)
  assert len(lists["expand_ratios"]) == 6


def test_redistribution_keeps_stage_output_and_cuts_overhead():
  model = models.create("mobilenetv2_100")
  shape = (1, 224, 224, 3)
  v = report.abstract_variables(model, shape)
  rd, split = redistribute(model, 4)
  v_rd = report.abstract_variables(rd, shape)
  before = mac_overhead(model, v, shape, split=4, num_patches=4)
  after = mac_overhead(rd, v_rd, shape, split=split, num_patches=4)
  assert after["overhead"] < before["overhead"] / 2
  mem = activation_memory(rd, v_rd, shape, split=split, num_patches=4)
  assert mem["stage_output_bytes"] == 28 * 28 * 32   # the same 28x28x32 stage output
