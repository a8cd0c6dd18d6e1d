"""The house rules: the engine never imports textual, and no SQL lives outside the store."""

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
import selfinstruct_tui.tui.view  # what the panes show is Textual-free too
print("ok")
"""


def test_engine_imports_without_textual():
    proc = subprocess.run([sys.executable, "-c", BLOCK_TEXTUAL], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_no_sql_outside_the_store():
    """The store is the one place with SQL: everything else asks it for records."""
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parent.parent / "selfinstruct_tui"
    sql = re.compile(r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE TABLE)\b|"
                     r"\.execute\(|sqlite3\.connect")
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "store.py" and path.parent.name == "engine":
            continue
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if sql.search(line):
                offenders.append(f"{path.relative_to(package)}:{n}: {line.strip()}")
    assert offenders == []
