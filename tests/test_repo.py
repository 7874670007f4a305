"""Repository-level checks: the README's commands, CI, configs and notebooks."""

import re
import runpy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _readme_commands():
  text = (REPO / "README.md").read_text()
  section = text.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```bash\n(.*?)\n```", section, re.S)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
  commands = _readme_commands()
  assert len(commands) == 2
  run, test = commands
  assert "python -m jaxdl.train --config configs/quickstart.py" in run
  assert "pytest" in test and "pip install" in test
  ci = (REPO / ".ci" / "run").read_text()
  assert test in ci.splitlines(), "CI must run the README's test command verbatim"


CONFIGS = sorted(p for p in (REPO / "configs").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_and_documents_its_command(path):
  module = runpy.run_path(str(path))
  doc = module.get("__doc__") or ""
  assert f"configs/{path.name}" in doc and "python -m jaxdl" in doc, \
      f"{path.name}: the docstring must hold the exact command that runs it"
  config = module["get_config"]()
  assert "trainer" in config or "model" in config
  module["get_config"]("runlocal")
