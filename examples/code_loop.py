"""An agent-style loop: write code, run it, feed the result into the next step.

A real agent would ask a model for each snippet; here the "model" is a fixed plan whose later
steps read what earlier steps produced, so every step depends on real sandbox output.
"""

from __future__ import annotations

from emberbox import CommandExitException, Sandbox

PLAN = [
    "import random; random.seed(7); print(sorted(random.sample(range(100), 5)))",
    "import json, sys; data = json.loads(open('/tmp/last.txt').read()); print(sum(data))",
    "raise SystemExit('deliberate failure: the loop sees stderr and the exit code')",
]


def main() -> None:
    with Sandbox(timeout=300) as sandbox:
        for step, code in enumerate(PLAN, 1):
            sandbox.files.write(f"/tmp/step{step}.py", code)
            try:
                result = sandbox.commands.run(f"python3 /tmp/step{step}.py", timeout=30)
            except CommandExitException as failed:
                print(f"step {step}: exit {failed.exit_code}: {failed.stderr.strip()}")
                continue
            output = result.stdout.strip()
            print(f"step {step}: {output}")
            sandbox.files.write("/tmp/last.txt", output)


if __name__ == "__main__":
    main()
