"""selfinstruct-tui: generate instruction-tuning data with the Self-Instruct method."""

__version__ = "0.1.0"
