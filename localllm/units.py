"""Sizes as people read them: bytes in binary units, labelled as such (they agree with nvidia-smi and `ls -lh`),
and counts with a decimal suffix."""


def format_size(n: float) -> str:
    """812 B, 1.5 KiB, 298.9 MiB, 1.4 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def format_count(n: int) -> str:
    """134.52M, 8.03B: a parameter count as `show` and Ollama's parameter_size give it."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(n)
