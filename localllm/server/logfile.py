"""The daemon's log file: readable by the user only (prompts and tracebacks can land in it), rotated by size,
and the process' stdout and stderr as well, so that what engine processes and crashes print lands in the
current file too."""
from __future__ import annotations

import os
from logging.handlers import RotatingFileHandler
from pathlib import Path

from localllm.hub.paths import open_private

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3   # daemon.log.1 .. daemon.log.3 besides daemon.log: 40 MiB at most


class DaemonLogHandler(RotatingFileHandler):
    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS,
                 redirect_fds: tuple[int, ...] = (1, 2)):
        self.redirect_fds = redirect_fds   # set first: the base class opens the file at once
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")

    def _open(self):
        """Called at start and after each rollover: the redirected descriptors move to the new file."""
        stream = open_private(Path(self.baseFilename), "a", encoding=self.encoding, errors=self.errors)
        for fd in self.redirect_fds:
            os.dup2(stream.fileno(), fd)
        return stream
