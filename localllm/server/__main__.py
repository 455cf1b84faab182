"""python -m localllm.server: the daemon, in the foreground (what `localllm serve` and ensure_daemon run)."""
import sys

if __name__ == "__main__":
    from localllm.server.daemon import main

    sys.exit(main())
