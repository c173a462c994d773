"""llmtop: a live load tester for LLM inference servers."""

__version__ = "0.1.0"
