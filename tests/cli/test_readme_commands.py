"""The README's quick start and CLI sections: every command runs, and the reference is current.

The shared `system` fixture ran each shell command of those sections in order
(see conftest); here each one is checked for a zero exit and no traceback,
and the instance YAML reference is compared with what the model generates.
"""

from __future__ import annotations

import pytest

from foresight.cli import instance_file
from tests.cli.conftest import DONE_BY_THE_FIXTURE, README, System, readme_commands

pytestmark = pytest.mark.integration


def test_every_readme_command_ran_cleanly(system: System) -> None:
    commands = readme_commands()
    ran = [command for command, _, _ in system.readme]
    # Nothing is skipped silently: only the set-up lines the fixture does itself.
    assert [c for c in commands if c not in ran] == list(DONE_BY_THE_FIXTURE)
    assert len(ran) >= 25
    for command, code, output in system.readme:
        assert code == 0, f"{command}: exit {code}\n{output}"
        assert "Traceback" not in output, f"{command}:\n{output}"
    assert (system.root / "lookalikes.csv").read_text().startswith("rank,profile_id,similarity")
    assert (system.root / "reports" / "cluster-map.html").exists()


def test_readme_commands_parser_skips_comments_only() -> None:
    text = "x\n## Quick start\n```bash\nfoo --a 1   # note\n# only a comment\n\nbar\n```\n## CLI\n```bash\nbaz\n```\n## Next\n```bash\nnot this\n```\n"
    assert readme_commands(text) == ["foo --a 1", "bar", "baz"]


def test_instance_reference_is_generated_from_the_model() -> None:
    text = README.read_text()
    example = text.split("<!-- instance-example:start -->\n```yaml\n", 1)[1].split("```", 1)[0]
    assert example == instance_file.EXAMPLE
    reference = text.split("<!-- instance-reference:start -->\n", 1)[1].split("<!--", 1)[0]
    assert reference == instance_file.reference_markdown()
    instance_file.load(example)  # the starting file is itself valid
