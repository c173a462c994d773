"""`python -m llmtop` runs the CLI, so tests and subprocesses need no console script."""

if __name__ == "__main__":  # guarded: the spawned load process imports this module
    from llmtop.cli import main

    main()
