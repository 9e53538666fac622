"""Configuration that cannot hurt (issue 9): bounded size and alias expansion, no tracebacks,
and the child-process reader that reloads use."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from router.config import ConfigError, load_config, parse_config, worker
from router.config import load as load_module
from router.config.worker import load_config_offloaded

MODELROUTER = str(Path(sys.executable).parent / "modelrouter")

GOOD = """\
version: 1
state: {store: memory}
backends:
  a: {url: "http://127.0.0.1:1"}
  b: {url: "http://127.0.0.1:2"}
routes:
  - name: r
    match: {path_prefix: /x}
    sticky: {key: ip}
    policy: {kind: weighted, weights: {a: 1, b: 3}}
"""


def bomb(levels: int = 9) -> str:
    lines = ['x0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for k in range(1, levels + 1):
        lines.append(f"x{k}: &a{k} [" + ",".join([f"*a{k - 1}"] * 9) + "]")
    return GOOD + "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [9, 10])
def test_validate_refuses_an_alias_bomb_quickly(levels: int, tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb(levels))
    assert path.stat().st_size < 1000
    started = time.monotonic()
    proc = subprocess.run(
        [MODELROUTER, "validate", str(path)], capture_output=True, text=True, timeout=120
    )
    took = time.monotonic() - started
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"{path}: too many aliases/nodes"), line
    print(f"\nalias bomb ({levels} levels) refused by `modelrouter validate` in {took:.2f}s")
    assert took < 30  # a process start; the check itself is linear in the nodes as written


def test_aliases_within_reason_still_work() -> None:
    text = """\
version: 1
backends:
  a: &be {url: "http://127.0.0.1:1", timeout: 2s}
  b: *be
  c: {<<: *be, url: "http://127.0.0.1:3"}
routes:
  - {name: r, policy: {kind: weighted, weights: {a: 1, b: 1, c: 1}}}
"""
    cfg = parse_config(text, "ok.yaml")
    assert cfg.backends["b"].timeout == 2.0 and cfg.backends["c"].port == 3


def test_recursive_alias_is_an_error() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(GOOD + "x: &a [1, *a]\n", "rec.yaml")
    assert e.value.errors == ["rec.yaml:11: an alias refers to the node that contains it"]


def test_too_large_file_is_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(load_module, "MAX_CONFIG_BYTES", 1000)
    path = tmp_path / "big.yaml"
    path.write_text(GOOD + "#" * 2000 + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.errors[0].startswith(f"{path}: ")
    assert "a config may have at most 1000" in e.value.errors[0]


def test_out_of_memory_is_a_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)

    def exhausted(_: object) -> None:
        raise MemoryError

    monkeypatch.setattr(load_module, "_config", exhausted)
    assert load_module.validate_main(path) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"{path}: ran out of memory reading the config; it is too large"


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    deep = GOOD + "deep: " + "[" * 50_000 + "]" * 50_000 + "\n"
    with pytest.raises(ConfigError) as e:
        parse_config(deep, "deep.yaml")
    assert e.value.errors[0].startswith("deep.yaml")


@pytest.fixture(params=["thread", "child"])
def reader_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Small files are read on a thread, large ones in a child: both ways, whatever the size."""
    monkeypatch.setattr(worker, "INLINE_BYTES", 1 << 30 if request.param == "thread" else 0)
    return str(request.param)


async def test_offloaded_reader_gives_the_same_config(tmp_path: Path, reader_kind: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    assert await load_config_offloaded(path) == load_config(path)


async def test_offloaded_reader_reports_errors_and_bombs(tmp_path: Path, reader_kind: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(GOOD.replace("weights: {a: 1, b: 3}", "weights: {a: 1, zz: 3}"))
    with pytest.raises(ConfigError) as e:
        await load_config_offloaded(path)
    assert "unknown backend 'zz'" in e.value.errors[0]
    path.write_text(bomb())
    with pytest.raises(ConfigError) as e:
        await load_config_offloaded(path)
    assert "too many aliases/nodes" in e.value.errors[0]
    with pytest.raises(ConfigError) as e:
        await load_config_offloaded(tmp_path / "missing.yaml")
    assert e.value.errors == [f"{tmp_path / 'missing.yaml'}: no such file"]
