"""Build hook: compile the data-plane hot path with mypyc when it can; pure Python otherwise.

MODELROUTER_PURE=1 skips compilation. Editable installs stay pure (a compiled module next to its
source would shadow every edit). Any failure to compile falls back to the pure-Python install.
"""

from __future__ import annotations

import glob
import os
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

# the data plane: the per-request path (router/dataplane/); everything else stays interpreted
# (measured: compiling runtime.py and policies/weighted.py as well gained nothing more)
HOT = sorted(glob.glob("router/dataplane/*.py"))
# Never router/metrics.py: it subclasses prometheus_client's Collector; compiled against an
# unknown (Any) base class the native class breaks (SystemError, then a segfault). The build
# runs before dependencies are installed, so prometheus-client is a build requirement: mypy
# follows imports into metrics.py and --strict fails there without its types.


class OptionalBuildExt(build_ext):
    """Build the mypyc extensions, or none of them: a half-built set would not import."""

    def run(self) -> None:
        if getattr(self, "editable_mode", False) and os.environ.get("MODELROUTER_COMPILE") != "1":
            self.extensions = []
            return
        try:
            super().run()
        except Exception as e:  # no C compiler, missing headers, ...: install pure Python
            print(f"modelrouter: mypyc build failed ({e}); installing pure Python", file=sys.stderr)
            for ext in self.extensions:
                path = self.get_ext_fullpath(ext.name)
                if os.path.exists(path):
                    os.remove(path)
            self.extensions = []

    def get_outputs(self) -> list[str]:
        return [p for p in super().get_outputs() if os.path.exists(p)]


# setuptools runs setup.py for metadata too: compile only in the commands that build
BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "install"}


def ext_modules() -> list[Any]:
    if os.environ.get("MODELROUTER_PURE") == "1" or not BUILD_COMMANDS & set(sys.argv):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("modelrouter: mypyc not available; installing pure Python", file=sys.stderr)
        return []
    try:
        return list(mypycify(HOT, opt_level="3"))
    except BaseException as e:  # mypyc reports type errors with SystemExit
        print(
            f"modelrouter: mypyc refused the sources ({e!r}); installing pure Python",
            file=sys.stderr,
        )
        return []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
