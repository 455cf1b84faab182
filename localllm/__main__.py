"""`python -m localllm ...` is the `localllm` command (how the background daemon is started: a module named
__main__ is not imported again by the engine processes multiprocessing spawns)."""
from localllm.cli.main import app

if __name__ == "__main__":
    app(prog_name="localllm")
