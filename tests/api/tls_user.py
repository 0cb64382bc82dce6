"""What a user of a server with TLS does, configured only the way its banner says: ``E2B_*``
variables, ``SSL_CERT_FILE`` (the local CA plus the system's roots) and a resolver that sends
``*.<domain>`` to the server. No routing headers anywhere: every sandbox URL is by name.

Run by tests/api/test_tls.py in a private mount namespace; prints one JSON line of what it saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time

import httpx
from e2b import Sandbox

from emberbox import Sandbox as OurSandbox

CURL = ["curl", "-sS", "--cacert", os.environ["NODE_EXTRA_CA_CERTS"], "-w", "\n%{http_code}"]


def curl(*args: str) -> list[str]:
    """Plain curl: body and status; it trusts the CA it is given and nothing else."""
    done = subprocess.run([*CURL, *args], capture_output=True, text=True, timeout=60, check=True)
    body, _, status = done.stdout.rpartition("\n")
    return [body, status]


def main() -> None:
    out: dict[str, object] = {}
    sbx = Sandbox.create(timeout=120)
    try:
        out["envd_url"] = sbx.envd_api_url
        out["echo"] = sbx.commands.run("echo over-tls").stdout
        sbx.files.write("/home/user/in.txt", "from the sdk")
        sbx.commands.run("cd /home/user && python3 -m http.server 8080", background=True)
        host = sbx.get_host(8080)
        out["host"] = host
        deadline = time.monotonic() + 30
        while True:  # the server in the sandbox takes a moment to listen
            page = httpx.get(f"https://{host}/in.txt", timeout=10)
            if page.status_code != 502 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        out["page"] = [page.text, page.status_code, page.http_version]

        out["download"] = curl(sbx.download_url("/home/user/in.txt", use_signature_expiration=60))
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("uploaded with curl")
        up = sbx.upload_url("/home/user/up.txt", use_signature_expiration=60)
        out["upload"] = curl("-F", f"file=@{f.name}", up)
        out["uploaded"] = sbx.files.read("/home/user/up.txt")
        expired = sbx.download_url("/home/user/in.txt", use_signature_expiration=1)
        time.sleep(2.5)
        out["expired"] = curl(expired)
        out["unsigned"] = curl(f"https://{sbx.get_host(49983)}/files?path=/home/user/in.txt")

        ours = OurSandbox.connect(sbx.sandbox_id)
        out["ours"] = ours.commands.run("echo ours").stdout
        out["ours_host"] = ours.get_host(8080)

        # E2B_DOMAIN alone: the SDK finds the API at https://api.<domain> (the proxy's
        # listener answers that name).
        del os.environ["E2B_API_URL"]
        again = Sandbox.connect(sbx.sandbox_id)
        out["by_domain"] = [
            again.connection_config.api_url,
            again.commands.run("echo by-domain").stdout,
        ]
    finally:
        sbx.kill()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
