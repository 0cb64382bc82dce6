"""Upload a local file, transform it inside the sandbox, download the result (streamed)."""

from __future__ import annotations

import hashlib
import os
import tempfile

from emberbox import Sandbox


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, Sandbox(timeout=120) as sandbox:
        source = os.path.join(tmp, "input.bin")
        with open(source, "wb") as f:
            f.write(os.urandom(8 * 1024 * 1024))
        with open(source, "rb") as f:  # streamed: never read whole into memory
            sandbox.files.write("/home/user/input.bin", f)
        sandbox.commands.run("gzip -k /home/user/input.bin")
        digest = hashlib.sha256()
        for chunk in sandbox.files.read("/home/user/input.bin.gz", format="stream"):
            digest.update(chunk)
        inside = sandbox.commands.run("sha256sum /home/user/input.bin.gz").stdout.split()[0]
        print("downloaded sha256 matches the sandbox's:", digest.hexdigest() == inside)


if __name__ == "__main__":
    main()
