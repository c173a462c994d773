"""The embedded simulated engine: performance model, scheduler, OpenAI-compatible server.

Everything here is labelled simulated on the wire (`x-llmtop-sim: 1`, `/version`).
"""
