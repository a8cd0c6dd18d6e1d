"""The engine must not import textual: the headless CLI and detached runs share it with the TUI."""

import subprocess
import sys

BLOCK_TEXTUAL = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "textual" or name.startswith("textual."):
            raise ImportError("textual is blocked in this test")
sys.meta_path.insert(0, Block())
import pkgutil, importlib, selfinstruct_tui.engine as engine
for mod in pkgutil.iter_modules(engine.__path__):
    importlib.import_module(f"selfinstruct_tui.engine.{mod.name}")
import selfinstruct_tui.headless
print("ok")
"""


def test_engine_imports_without_textual():
    proc = subprocess.run([sys.executable, "-c", BLOCK_TEXTUAL], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
