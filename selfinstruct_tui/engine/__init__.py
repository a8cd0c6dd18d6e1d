"""The Textual-free Self-Instruct engine.

Nothing in this package may import textual: the headless CLI, the detached runner and the
TUI all drive the same engine (tests/test_layering.py enforces it).
"""
