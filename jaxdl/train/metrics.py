"""Metric writer: one JSON object per line in WORKDIR/metrics.jsonl, plus TensorBoard events.

  writer = MetricWriter(workdir)
  writer.write(step, {"train/loss": 0.3, "eval/accuracy": 0.97})
  writer.close()

Only process 0 writes. On a resumed run (`resume_step`), lines of steps after the restored
checkpoint are dropped first, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np


def _to_python(v):
  if isinstance(v, (np.ndarray, np.generic)) or hasattr(v, "__array__"):
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()
  return v


class MetricWriter:
  def __init__(self, workdir, *, resume_step: int | None = None, tensorboard: bool = True,
               enabled: bool | None = None):
    import jax
    self.enabled = (jax.process_index() == 0) if enabled is None else enabled
    self.path = Path(workdir) / "metrics.jsonl"
    self._tb = None
    if not self.enabled:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if resume_step is not None and self.path.exists():
      self._truncate_after(resume_step)
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(logdir=str(Path(workdir) / "tensorboard"), flush_secs=30)

  def _truncate_after(self, step):
    keep = []
    for line in self.path.read_text().splitlines():
      try:
        if json.loads(line).get("step", 0) <= step:
          keep.append(line)
      except json.JSONDecodeError:  # A line cut by a crash.
        continue
    tmp = self.path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, self.path)

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: _to_python(v) for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, int(step))

  def flush(self):
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir) -> list[dict]:
  """All records of WORKDIR/metrics.jsonl."""
  path = Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
