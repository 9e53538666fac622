"""Config reloads read and validate the file off the router's loop: a child process for big ones.

Parsing a large file is seconds of CPU that would hold the GIL (libyaml does not let go of it)
and churn the garbage collector of the process serving requests. For a file of more than
INLINE_BYTES `load_config_offloaded` runs ``python -m router.config.worker FILE`` instead: the
child validates with `load_config` and writes one pickle to stdout, either
``("error", [lines])`` or ``("ok", shell, backends, routes)`` where each backend and route is
pickled on its own, so the parent rebuilds the `Config` a slice at a time and yields to its
loop in between. The child's memory is bounded (CHILD_MEMORY): a config that needs more is a
clear error, not a router that runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import resource
import sys
from dataclasses import replace
from pathlib import Path
from typing import Final

from policies.spec import BackendConfig, Config, RouteConfig
from router.config.load import load_config
from router.config.reader import ConfigError

__all__ = ["load_config_offloaded"]

INLINE_BYTES: Final = 256 * 1024  # smaller files are read on a thread, larger in a child
CHILD_TIMEOUT: Final = 300.0  # seconds a child may take to read a config
CHILD_MEMORY: Final = 2 << 30  # address space of the child, bytes
_SLICE: Final = 64  # routes or backends rebuilt between two yields to the loop


async def load_config_offloaded(path: str | Path) -> Config:
    """`load_config(path)` off the event loop; ConfigError (never anything else) when the file
    cannot be used, including when the child fails or runs out of time or memory.

    A file under INLINE_BYTES is read on a worker thread (milliseconds: a reload stays quick;
    alias bombs are refused before they expand); a larger one in a child process.
    """
    source = str(path)
    try:
        small = Path(path).stat().st_size < INLINE_BYTES
    except OSError:
        small = True  # load_config words the error
    if small:
        return await asyncio.to_thread(load_config, path)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "router.config.worker",
            source,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        raise ConfigError([f"{source}: cannot start the config reader: {e}"]) from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CHILD_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise ConfigError(
            [f"{source}: reading the config took longer than {CHILD_TIMEOUT:g}s; not applied"]
        ) from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0 or not out:
        why = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise ConfigError(
            [f"{source}: the config reader failed (exit code {proc.returncode}): {why[0]}"]
        )
    try:
        answer = pickle.loads(out)
        if answer[0] == "error":
            raise ConfigError([str(line) for line in answer[1]])
        _, shell_b, backends_b, routes_b = answer
        backends: dict[str, BackendConfig] = {}
        for i, b in enumerate(backends_b):
            if i % _SLICE == _SLICE - 1:
                await asyncio.sleep(0)
            name, cfg = pickle.loads(b)
            backends[name] = cfg
        routes: list[RouteConfig] = []
        for i, r in enumerate(routes_b):
            if i % _SLICE == _SLICE - 1:
                await asyncio.sleep(0)
            routes.append(pickle.loads(r))
        shell: Config = pickle.loads(shell_b)
    except ConfigError:
        raise
    except Exception as e:  # a child that wrote something else: not our format
        raise ConfigError([f"{source}: the config reader's answer is unreadable: {e}"]) from None
    return replace(shell, backends=backends, routes=tuple(routes))


def _answer(path: str) -> tuple[object, ...]:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        return ("error", e.errors)
    except MemoryError:
        return ("error", [f"{path}: ran out of memory reading the config; it is too large"])
    shell = replace(cfg, backends={}, routes=())
    return (
        "ok",
        pickle.dumps(shell),
        [pickle.dumps(item) for item in cfg.backends.items()],
        [pickle.dumps(r) for r in cfg.routes],
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m router.config.worker CONFIG", file=sys.stderr)
        return 2
    with contextlib.suppress(ValueError, OSError):
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or hard > CHILD_MEMORY:
            resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, hard))
    try:
        answer = _answer(argv[0])
    except MemoryError:
        answer = ("error", [f"{argv[0]}: ran out of memory reading the config; it is too large"])
    sys.stdout.buffer.write(pickle.dumps(answer))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
