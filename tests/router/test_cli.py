"""The modelrouter command: parsing, validate exit codes, status rendering, admin commands."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from router.admin import create_admin_app
from router.app import close_runtime, open_runtime
from router.cli import UsageError, format_status, main, parse_weights
from router.config import load_config
from tests.router.test_admin import TOKEN, config_text

MODELROUTER = Path(sys.executable).parent / "modelrouter"


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [str(MODELROUTER)] if MODELROUTER.exists() else [sys.executable, "-m", "router.cli"]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


# ---- pure parsing and rendering ---------------------------------------------------------------


def test_parse_weights() -> None:
    assert parse_weights(["a=70", "b=30"]) == {"a": 70.0, "b": 30.0}
    assert parse_weights(["a=0", "b=0.5"]) == {"a": 0.0, "b": 0.5}


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([], "at least one NAME=WEIGHT"),
        (["a=x"], r"'a=x': weight must be a number, got 'x'"),
        (["a"], r"'a': expected NAME=WEIGHT"),
        (["=5"], r"'=5': the backend name before '=' is empty"),
        (["a=-1"], r"'a=-1': weight must be a non-negative number"),
        (["a=inf"], r"'a=inf': weight must be a non-negative number"),
        (["a=nan"], r"'a=nan': weight must be a non-negative number"),
        (["a=1", "a=2"], r"backend 'a' is given twice"),
        (["a=0", "b=0"], r"must not all be zero"),
    ],
)
def test_parse_weights_rejects(pairs: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_weights(pairs)


CANARY_STATUS: dict[str, Any] = {
    "route": "clf",
    "kind": "canary",
    "phase": "progressing",
    "step": 1,
    "steps": [5, 10, 25, 50, 100],
    "shares": {"stable": 0.9, "cand": 0.1},
    "arms": {
        "stable": {
            "version": "1.0.0",
            "decisions": 1080,
            "rewards": 360,
            "reward_sum": 280.0,
            "reward_mean": 0.7777,
        },
        "cand": {
            "version": "1.1.0",
            "decisions": 120,
            "rewards": 40,
            "reward_sum": 31.0,
            "reward_mean": 0.775,
        },
    },
    "backends": {"stable": {"up": True, "version": "1.0.0"}, "cand": {"up": False}},
    "regret": 3.2,
    "analysis": [{"message": "error_rate 0.01 <= max 0.05 over 312 requests"}],
    "test": {"method": "msprt", "p_value": 0.031, "prob_best": {"stable": 0.4, "cand": 0.6}},
}


def test_format_status_table() -> None:
    text = format_status(CANARY_STATUS)
    lines = text.splitlines()
    assert lines[0] == "route clf  kind canary  phase progressing  step 1 of 5  regret 3.2"
    header = lines[1].split()
    assert header == [
        "backend",
        "version",
        "share",
        "decisions",
        "rewards",
        "reward_mean",
        "prob_best",
        "up",
    ]
    assert lines[2].split() == ["stable", "1.0.0", "90.0%", "1080", "360", "0.7777", "0.4", "yes"]
    assert lines[3].split() == ["cand", "1.1.0", "10.0%", "120", "40", "0.775", "0.6", "DOWN"]
    assert "test: method msprt, p_value 0.031" in text
    assert "error_rate 0.01 <= max 0.05 over 312 requests" in text


def test_format_status_tolerates_sparse_json() -> None:
    assert format_status({"route": "r", "kind": "weighted"}) == "route r  kind weighted"
    text = format_status(
        {
            "route": "r",
            "kind": "bandit",
            "phase": "active",
            "shares": {"a": 1.0},
            "arms": {"a": {"decisions": 3}},
        }
    )
    assert re.search(r"a\s+-\s+100\.0%\s+3\s+-\s+-", text), text


# ---- argument handling ------------------------------------------------------------------------


def test_unknown_command_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stauts"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'stauts'" in err and "Did you mean 'status'?" in err
    assert "set-weights" in err  # lists the commands
    assert main(["frobnicate"]) == 2
    assert "Did you mean" not in capsys.readouterr().err


def test_no_command_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("modelrouter ")
    assert main(["promote"]) == 2  # missing ROUTE: argparse usage error
    assert "ROUTE" in capsys.readouterr().err


def test_set_weights_bad_pair_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["set-weights", "clf", "a=x", "--admin", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "modelrouter set-weights: 'a=x': weight must be a number, got 'x'"


def test_unreachable_admin(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    assert main(["status", "--admin", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"modelrouter: cannot reach the admin API at {url} (is modelrouter serve running? "
        "pass --admin URL)"
    )
    assert "Traceback" not in err
    assert main(["status", "--admin", "ftp://x"]) == 2
    assert "admin URL must look like" in capsys.readouterr().err


def test_validate_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(config_text())
    proc = run_cli("validate", str(good))
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_text().replace("model-a: 90", "model-z: 90") + "bogus: 1\n")
    proc = run_cli("validate", str(bad))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) >= 2 and all(line.startswith(f"{bad}") for line in lines), proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("validate", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


# ---- admin commands against a live admin listener ---------------------------------------------


@pytest.fixture
async def admin_url(tmp_path: Path) -> AsyncIterator[str]:
    path = tmp_path / "router.yaml"
    path.write_text(config_text())
    rt = await open_runtime(load_config(path), config_path=path)
    server = TestServer(create_admin_app(rt, token=TOKEN), host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}"
    await server.close()
    await close_runtime(rt)


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    # the CLI is synchronous: run it off the loop that serves the admin app
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_admin_commands(
    admin_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELROUTER_ADMIN_TOKEN", TOKEN)
    code, out, err = await cli(capsys, "status", "--admin", admin_url)
    assert code == 0, err
    assert out.startswith("route clf  kind weighted")
    assert re.search(r"model-a\s+1\.0\.0\s+90\.0%", out), out

    code, out, err = await cli(capsys, "status", "clf", "--json", "--admin", admin_url)
    assert code == 0 and '"route": "clf"' in out

    code, out, err = await cli(
        capsys,
        "set-weights",
        "clf",
        "model-a=1",
        "model-b=3",
        "--reason",
        "ramp",
        "--admin",
        admin_url,
    )
    assert code == 0, err
    assert out.strip().endswith("shares model-a 25.0% model-b 75.0%"), out

    code, out, err = await cli(capsys, "audit", "--route", "clf", "--admin", admin_url)
    assert code == 0 and "set_weights" in out and "ramp" in out

    code, out, err = await cli(capsys, "promote", "clf", "--admin", admin_url)
    assert code == 1
    assert err.startswith("modelrouter: route 'clf' is a weighted route")

    code, out, err = await cli(capsys, "status", "nope", "--admin", admin_url)
    assert code == 1 and "unknown route 'nope'" in err

    code, out, err = await cli(capsys, "reload", "--admin", admin_url)
    assert code == 0, err
    assert out.startswith("reloaded (generation 2): added: -; removed: -; changed: -;")


async def test_admin_commands_token_errors(
    admin_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODELROUTER_ADMIN_TOKEN", raising=False)
    code, _, err = await cli(capsys, "status", "--admin", admin_url)
    assert code == 1
    assert "MODELROUTER_ADMIN_TOKEN is not set" in err
    monkeypatch.setenv("MODELROUTER_ADMIN_TOKEN", "wrong")
    code, _, err = await cli(capsys, "pause", "clf", "--admin", admin_url)
    assert code == 1
    assert "token in MODELROUTER_ADMIN_TOKEN was refused" in err


async def test_reload_rejected_prints_every_error(
    admin_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELROUTER_ADMIN_TOKEN", TOKEN)
    path = tmp_path / "router.yaml"
    path.write_text(config_text().replace("model-a: 90", "model-z: 90") + "bogus: 1\n")
    code, _, err = await cli(capsys, "reload", "--admin", admin_url)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0] == "modelrouter: reload rejected, the old config keeps serving:"
    assert len(lines) >= 3 and all(line.startswith(str(path)) for line in lines[1:])


def test_admin_url_from_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "router.yaml"
    path.write_text(
        config_text().replace(
            "admin: {listen: 127.0.0.1:0}", f"admin: {{listen: '0.0.0.0:{port}'}}"
        )
    )
    assert main(["status", "--config", str(path)]) == 1
    assert f"cannot reach the admin API at http://127.0.0.1:{port} " in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nbogus: 1\n")
    assert main(["status", "--config", str(bad)]) == 2
    assert "is not valid" in capsys.readouterr().err


def test_format_status_shows_regret_interval_and_per_context_view() -> None:
    status = {
        "route": "recommend",
        "kind": "contextual_bandit",
        "phase": "active",
        "regret": 12.5,
        "regret_interval": [8.25, 16.75],
        "shares": {"summer": 0.6, "winter": 0.4},
        "arms": {"summer": {"decisions": 60}, "winter": {"decisions": 40}},
        "contexts": [
            {
                "context": "climate=hot",
                "sent_to": "summer",
                "decisions": 55,
                "arms": {
                    "summer": {"estimate": 0.12, "ci_low": 0.1, "ci_high": 0.14},
                    "winter": {"estimate": 0.02, "ci_low": 0.0, "ci_high": 0.05},
                },
            }
        ],
    }
    text = format_status(status)
    assert "regret 12.5 (95% 8.25-16.75)" in text
    assert "climate=hot -> summer (55 decisions): summer 0.12 [0.1, 0.14]" in text


def test_status_says_which_process_drives_a_rollout() -> None:
    from router.cli import format_status

    base = {"route": "clf", "kind": "canary", "step": 1, "steps": [10, 50, 100]}
    control = {"node": "h:1:ab", "leading": True, "version": 7, "lease": 10.0}
    st = {**base, "phase": "progressing", "failures": 1, "failure_limit": 2}
    st |= {"inconclusive": 2, "inconclusive_limit": 5, "control": control}
    out = format_status(st)
    assert "rollout: driven by this process, failures 1/2, inconclusive 2/5" in out
    follower = format_status({**st, "control": {**control, "leading": False}})
    assert "driven by another process" in follower
    done = format_status({**st, "phase": "promoted", "inconclusive_limit": 0})
    assert "rollout: failures 1/2, inconclusive 2/no limit" in done


def test_format_status_lists_endpoints_out_of_rotation() -> None:
    status = {
        "route": "r",
        "kind": "weighted",
        "shares": {"a": 1.0},
        "backends": {
            "a": {
                "up": True,
                "endpoints": [
                    {"address": "10.0.0.1:8501", "up": True, "in_flight": 3},
                    {"address": "10.0.0.2:8501", "up": False, "ejected": True, "in_flight": 0},
                ],
            }
        },
    }
    text = format_status(status)
    assert (
        "endpoints of a: 10.0.0.1:8501 up (3 in flight), 10.0.0.2:8501 EJECTED (0 in flight)"
        in text
    )
