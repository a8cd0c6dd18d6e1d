"""Build hook: compiles the similarity kernel (selfinstruct_tui/engine/similarity/rouge_kernel.c).

The kernel becomes the top-level extension module `_selfinstruct_rouge` in the wheel. Top level,
not inside the package, so that code run from a source checkout (`python -m pytest` puts the
checkout first on sys.path) still finds the installed, compiled module.

Without a working C compiler the wheel is built without it and says so; the index then falls back
to its numpy implementation, which gives the same answers more slowly.
"""

from __future__ import annotations

import os
import platform
import sysconfig
import tempfile

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = "selfinstruct_tui/engine/similarity/rouge_kernel.c"
MODULE = "_selfinstruct_rouge"


class KernelBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return
        if os.environ.get("SELFINSTRUCT_NO_KERNEL"):
            self.app.display_warning("SELFINSTRUCT_NO_KERNEL is set: building without the kernel")
            return
        try:
            built = self._compile()
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "no kernel"
            self.app.display_warning(
                f"could not compile {SOURCE} ({exc}); the similarity index will use its slower "
                "numpy implementation. Install a C compiler and the Python headers to get it."
            )
            return
        target = os.path.basename(built)
        if version == "editable":
            build_data["force_include_editable"][built] = target
        build_data["force_include"][built] = target
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def _compile(self) -> str:
        from setuptools import Distribution, Extension
        from setuptools.command.build_ext import build_ext

        # -ffp-contract=off: no fused multiply-add, so the F-measure rounds exactly as Python's.
        args = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-std=c11"]
        if platform.machine().lower() in ("x86_64", "amd64"):
            args.append("-mpopcnt")  # every x86-64 CPU since 2008; the scan counts bits a lot
        if sysconfig.get_platform().startswith("win"):
            args = ["/O2", "/fp:precise"]
        ext = Extension(MODULE, sources=[os.path.join(self.root, SOURCE)],
                        extra_compile_args=args)
        out = tempfile.mkdtemp(prefix="selfinstruct-kernel-")
        dist = Distribution({"name": MODULE, "ext_modules": [ext]})
        cmd = build_ext(dist)
        cmd.build_lib = out
        cmd.build_temp = os.path.join(out, "tmp")
        cmd.ensure_finalized()
        cmd.run()
        return cmd.get_ext_fullpath(MODULE)
