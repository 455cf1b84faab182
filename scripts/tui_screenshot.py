"""Draws assets/tui-chat.svg, the README's picture of `localllm chat`: a real greedy chat with the embedded model
through the daemon at $LOCALLLM_HOST (started if none runs), at 100 x 30, after two questions.

    python scripts/tui_screenshot.py [OUT.svg]
"""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from localllm.client import ensure_daemon
from localllm.tui.app import ChatApp

QUESTIONS = ["What is the capital of France?", "Name three primary colors."]


async def chat_and_draw(out: Path) -> None:
    app = ChatApp("smollm2:135m", client=ensure_daemon(), temperature=0, max_tokens=128)
    async with app.run_test(size=(100, 30)) as pilot:
        for question in QUESTIONS:
            before = len(app.chat.conversation.messages)
            await pilot.click("#prompt")
            await pilot.press(*question, "enter")
            deadline = time.monotonic() + 120
            while app.chat.streaming or len(app.chat.conversation.messages) < before + 2:
                if time.monotonic() > deadline:
                    raise SystemExit(f"no reply to {question!r} in 120 s")
                await pilot.pause(0.1)
        await pilot.pause(1.5)   # a status poll after the last reply: the KV and prefix figures settle
        app.save_screenshot(filename=out.name, path=str(out.parent))


if __name__ == "__main__":
    asyncio.run(chat_and_draw(Path(sys.argv[1] if len(sys.argv) > 1 else "assets/tui-chat.svg")))
