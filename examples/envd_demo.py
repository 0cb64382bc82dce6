"""Drive a running envd: wait for it, run a command, write a file and read it back.

python examples/envd_demo.py [http://127.0.0.1:49983]
"""

from __future__ import annotations

import asyncio
import sys
import time

from emberbox.envd_client import EnvdClient


async def main(url: str) -> None:
    async with EnvdClient(url) as envd:
        deadline = time.monotonic() + 10
        while not await envd.health():
            if time.monotonic() > deadline:
                raise SystemExit(f"envd at {url} did not become healthy")
            await asyncio.sleep(0.05)
        result = await envd.run('echo "hello from $(whoami) in $(pwd)"; uname -sr')
        print(f"exit {result.exit_code}: {result.text.strip()}")
        await envd.write_file("/tmp/emberbox-demo.txt", b"written through envd\n")
        print("read back:", (await envd.read_file("/tmp/emberbox-demo.txt")).decode().strip())
        listing = await envd.run("ls -l /tmp/emberbox-demo.txt")
        print(listing.text.strip())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:49983"))
