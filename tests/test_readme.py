"""The README stays true: generated reference, every CLI command, valid configs, real paths."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from router import reference
from router.cli import build_parser
from router.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REGENERATE = "python -m router.reference --write README.md"


@pytest.fixture(scope="module")
def text() -> str:
    return README.read_text(encoding="utf-8")


def _block(text: str) -> str:
    start, end = text.find(reference.START), text.find(reference.END)
    assert start >= 0 and end > start, (
        f"README.md lacks the {reference.START} ... {reference.END} markers"
    )
    return text[start + len(reference.START) : end].strip("\n")


def test_reference_is_generated_from_the_code(text: str) -> None:
    expected = reference.generate().strip("\n")
    assert _block(text) == expected, (
        f"the reference in README.md is out of date; regenerate it with: {REGENERATE}"
    )


def test_reference_covers_every_metric_and_policy_kind() -> None:
    from policies.spec import POLICY_KINDS

    out = reference.generate()
    for series, *_ in reference.metric_rows():
        assert series in out
    assert {"modelrouter_requests_total", "modelrouter_traffic_share"} <= set(
        re.findall(r"`(modelrouter_\w+)`", out)
    )
    for kind in POLICY_KINDS:
        assert f"(kind: {kind})" in out


def test_splice_and_write_roundtrip(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"# x\n\n{reference.START}\nstale\n{reference.END}\n\nafter\n", encoding="utf-8")
    assert reference.main(["--check", str(doc)]) == 1
    assert reference.main(["--write", str(doc)]) == 0
    assert reference.main(["--check", str(doc)]) == 0
    written = doc.read_text(encoding="utf-8")
    assert "stale" not in written and written.endswith(f"{reference.END}\n\nafter\n")
    with pytest.raises(reference.ReferenceError, match="REFERENCE:START"):
        reference.splice("no markers here", "x")


def _subcommands() -> list[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    raise AssertionError("router.cli.build_parser() has no subcommands")


def test_every_cli_command_is_in_the_readme(text: str) -> None:
    missing = [c for c in _subcommands() if f"modelrouter {c}" not in text]
    assert not missing, f"README.md never shows: {', '.join('modelrouter ' + c for c in missing)}"


def _yaml_blocks(text: str) -> list[tuple[int, str]]:
    blocks = []
    for m in re.finditer(r"^```yaml\n(.*?)^```", text, flags=re.S | re.M):
        blocks.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return blocks


def test_every_full_yaml_config_validates(text: str) -> None:
    configs = [
        (line, body) for line, body in _yaml_blocks(text) if re.search(r"^routes:", body, re.M)
    ]
    assert configs, "README.md has no ```yaml block with a full config (routes:)"
    for line, body in configs:
        try:
            parse_config(body, f"README.md (block at line {line})")
        except ConfigError as e:
            pytest.fail("\n".join(e.errors))


def test_paths_in_the_readme_exist(text: str) -> None:
    # globs such as `deploy/examples/modelrouter.db*` name files made at run time: skipped
    paths = set(
        re.findall(
            r"(?<![\w/])((?:deploy|docs|bench|router|policies|tests)/[\w./-]*\w)(?![\w./*-])", text
        )
    )
    paths.add(".ci/run")
    # decision logs the walkthrough writes (git-ignored), not files of the repository
    made_at_run_time = ("deploy/examples/logs",)
    paths = {p for p in paths if not p.startswith(made_at_run_time)}
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"README.md names files that do not exist: {missing}"
