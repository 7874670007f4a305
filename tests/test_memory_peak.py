"""tools/memory_peak.py: the live buffers at the peak of XLA's temporary allocation."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import memory_peak  # noqa: E402

BUFFERS = """BufferAssignment:
allocation 0: size 4096, parameter 0, shape |f32[32,32]| at ShapeIndex {}:
 value: <1 p @0> (size=4096,offset=0): f32[32,32]{1,0}
allocation 1: size 160, preallocated-temp:
 value: <2 a.1 @0> (size=100,offset=0): f32[25]{0}
 value: <3 b.2 @0> (size=100,offset=0): f32[25]{0}
 value: <4 c.3{0} (phi) @0> (size=50,offset=100): f32[12]{0}
 value: <5 d.4{} @0> (size=10,offset=150): f32[2]{0}
"""
RANGES = """HloLiveRange (max 9):
  InstructionSequence:
    0:p
    3:c.3
    6:b.2
  BufferLiveRange:
    p{}:0-9
    a.1{}:0-5
    b.2{}:6-9
    c.3{0}:3-7
    d.4{}:8-9
"""


def test_peak_is_the_largest_union_of_live_byte_ranges():
  values = memory_peak.temp_values(BUFFERS)
  assert [v.name for v in values] == ["a.1{}", "b.2{}", "c.3{0}", "d.4{}"]  # not parameter p
  ranges, seq = memory_peak.live_ranges(RANGES)
  assert ranges["c.3{0}"] == (3, 7) and seq[6] == "b.2"
  used, at, live = memory_peak.peak(values, ranges, seq)
  # a and c overlap from 3 to 5: 150 bytes. Later b reuses a's bytes (with c: 150 again,
  # not higher), and d joins b after c has ended: 110.
  assert (used, at) == (150, 3)
  assert [(l.name, l.size) for l in live] == [("a.1{}", 100), ("c.3{0}", 50)]
  assert memory_peak._union([(0, 100), (0, 100), (50, 120), (200, 210)]) == 130


def test_a_real_dump_peak_is_within_xla_s_temporary_allocation(tmp_path):
  """A jitted function whose sorted copies are live together: the tool's peak is at most
  XLA's temporary allocation and holds the [512, 512] sort outputs."""
  script = """
import json, jax, jax.numpy as jnp
def f(x):
  a = jnp.sort(x, axis=0)
  b = jnp.sort(a * 2.0, axis=1)
  c = jnp.sort(b + a, axis=0)
  return (a * b).sum() + c[0].sum()
x = jax.ShapeDtypeStruct((512, 512), jnp.float32)
m = jax.jit(f).lower(x).compile().memory_analysis()
print(json.dumps({"temp": m.temp_size_in_bytes}))
"""
  env = dict(os.environ, XLA_FLAGS=f"--xla_dump_to={tmp_path} --xla_dump_hlo_as_text",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                       text=True, check=True).stdout
  temp = json.loads(out.strip().splitlines()[-1])["temp"]
  used, at, live, n = memory_peak.analyse_dump(str(tmp_path), module="jit_f")
  assert 0 < used <= temp and 0 <= at < n
  assert live[0].size == 512 * 512 * 4 and live[0].shape.startswith("f32[512,512]")
  assert sum(l.size for l in live) >= used
  assert "peak" in memory_peak.report((used, at, live, n), top=3)
