"""Start a server inside the sandbox in the background and reach it through the proxy.

The proxy routes by ``Host: <port>-<sandboxId>.<domain>`` (what ``get_host`` returns); without
wildcard DNS we connect to the proxy's own address and send that Host header.
"""

from __future__ import annotations

import os
import time

import httpx

from emberbox import Sandbox


def main() -> None:
    with Sandbox(timeout=120) as sandbox:
        sandbox.files.write("/home/user/site/index.html", "<h1>served from a sandbox</h1>\n")
        server = sandbox.commands.run(
            "python3 -m http.server 8000 --bind 127.0.0.1",
            cwd="/home/user/site",
            background=True,
            timeout=0,
        )
        host = sandbox.get_host(8000)
        print("host:", host)
        proxy = os.environ.get("EMBERBOX_SANDBOX_URL") or f"http://{host}"
        for _ in range(50):
            try:
                response = httpx.get(f"{proxy}/", headers={"Host": host})
                if response.status_code == 200:
                    print(response.text.strip())
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        server.kill()


if __name__ == "__main__":
    main()
