"""tools/profile_step.py's trace arithmetic: a dot's thread-pool work (the idle gap after
its dispatch event) is counted under that dot, within each execution of the step only."""

import gzip
import json


def test_gaps_go_to_the_op_that_ended_last_within_each_step(tmp_path, tool):
  x = lambda name, ts, dur, tid=1: {"ph": "X", "name": name, "ts": ts, "dur": dur, "tid": tid}
  events = [
      x("ThunkExecutor::Execute (wait for completion)", 0, 100, tid=0),
      x("fusion.a", 0, 10), x("dot.b", 10, 2),       # dot.b's pool work: 12..50
      x("fusion.c", 50, 10), x("fusion.d", 55, 15, tid=2),  # overlapping threads; gap 70..80
      x("fusion.e", 80, 20),
      x("ThunkExecutor::Execute (wait for completion)", 200, 30, tid=0),
      x("dot.b", 200, 5), x("fusion.a", 225, 5),     # second step: 205..225 is dot.b's
      x("fusion.e", 300, 4),                         # outside any step: own time only
      x("python call", 0, 400, tid=9),               # not an op
  ]
  (tmp_path / "host").mkdir()
  with gzip.open(tmp_path / "host" / "t.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  names = {"fusion.a", "dot.b", "fusion.c", "fusion.d", "fusion.e"}
  totals, counts, with_gaps, walls = tool("profile_step").op_times(str(tmp_path), names)
  assert walls == [100, 30]
  assert counts["dot.b"] == 2 and totals["dot.b"] == 7
  assert with_gaps == {"fusion.a": 15, "dot.b": 7 + 38 + 20, "fusion.c": 10,
                       "fusion.d": 15 + 10, "fusion.e": 24}
  # Inside the steps, the attributed times add up to the wall time (less fusion.e's event
  # outside them, plus the 5 us in which fusion.c and fusion.d ran at once).
  assert sum(with_gaps.values()) - 4 == sum(walls) + 5


def test_gaps_go_to_the_last_pool_op_of_the_step_when_there_is_one(tmp_path, tool):
  x = lambda name, ts, dur, tid=1: {"ph": "X", "name": name, "ts": ts, "dur": dur, "tid": tid}
  step = "ThunkExecutor::Execute (wait for completion)"
  events = [
      x(step, 0, 100, tid=0),
      x("dot.b", 0, 10), x("fusion.u", 10, 2),      # an update started beside dot.b's work
      x("fusion.c", 50, 10),                         # gap 12..50: dot.b's, not fusion.u's
      x(step, 200, 30, tid=0),
      x("fusion.a", 200, 5), x("fusion.c", 225, 5),  # no pool op in this step: gap 205..225
  ]                                                  # goes to fusion.a, not to step 1's dot
  (tmp_path / "host").mkdir()
  with gzip.open(tmp_path / "host" / "t.trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  names = {"fusion.a", "dot.b", "fusion.c", "fusion.u"}
  _, _, with_gaps, walls = tool("profile_step").op_times(str(tmp_path), names, {"dot.b"})
  assert walls == [100, 30]
  assert with_gaps == {"dot.b": 10 + 38, "fusion.u": 2, "fusion.c": 15,
                       "fusion.a": 5 + 20}
