"""Sizes as people read them: binary units, labelled as such (they agree with nvidia-smi and `ls -lh`)."""


def format_size(n: float) -> str:
    """812 B, 1.5 KiB, 298.9 MiB, 1.4 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError
