"""`python -m llmtop.sim` runs the simulator command (what the launcher spawns)."""

from llmtop.sim.cli import sim_command

if __name__ == "__main__":
    sim_command(prog_name="llmtop sim")
