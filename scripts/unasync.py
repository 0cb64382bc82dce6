"""Write the SDK's sync face from its async core, line for line.

    python scripts/unasync.py          # regenerate src/emberbox/sdk/_sync/
    python scripts/unasync.py --check  # fail if _sync/ differs or a rule matched nothing

Only ``_async/`` is ever edited by hand (httpcore's approach). Rules are ordered, matched on
word boundaries; a rule that no longer matches anything fails ``--check`` so dead rules go.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [(ROOT / "src/emberbox/sdk/_async", ROOT / "src/emberbox/sdk/_sync")]

RULES: list[tuple[str, str]] = [
    (r"\basync def\b", "def"),
    (r"\basync with\b", "with"),
    (r"\basync for\b", "for"),
    (r"\bawait ", ""),
    (r"\b__aiter__\b", "__iter__"),
    (r"\b__anext__\b", "__next__"),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
    (r"\baclose\b", "close"),
    (r"\baread\b", "read"),
    (r"\baiter_raw\b", "iter_raw"),
    (r"\baiter_bytes\b", "iter_bytes"),
    (r"\baiter_lines\b", "iter_lines"),
    (r"\basyncio\.sleep\b", "time.sleep"),
    (r"^import asyncio$", "import time"),
    (r"\bAsync([A-Z]\w*)\b", r"\1"),
    (r"\bThe SDK's async core\b", "The SDK's sync face"),
]
HEADER = "# Generated from ../_async/{name} by scripts/unasync.py; edit that file instead.\n"


def rewrite(line: str, used: set[int]) -> str:
    for index, (pattern, replacement) in enumerate(RULES):
        line, count = re.subn(pattern, replacement, line)
        if count:
            used.add(index)
    return line


def generate(source: Path, used: set[int]) -> str:
    text = source.read_text()
    lines = [rewrite(line, used) for line in text.splitlines(keepends=True)]
    return HEADER.format(name=source.name) + "".join(lines)


def main(check: bool) -> int:
    used: set[int] = set()
    failed = False
    for async_dir, sync_dir in PAIRS:
        expected = {p.name: generate(p, used) for p in sorted(async_dir.glob("*.py"))}
        if check:
            present = {p.name for p in sync_dir.glob("*.py")}
            for name in sorted(present - set(expected)):
                print(f"{sync_dir / name}: has no async source", file=sys.stderr)
                failed = True
            for name, text in expected.items():
                target = sync_dir / name
                if not target.exists() or target.read_text() != text:
                    print(f"{target}: differs from its async source; run scripts/unasync.py",
                          file=sys.stderr)
                    failed = True
        else:
            sync_dir.mkdir(exist_ok=True)
            for stale in sync_dir.glob("*.py"):
                if stale.name not in expected:
                    stale.unlink()
            for name, text in expected.items():
                (sync_dir / name).write_text(text)
    unused = [RULES[i][0] for i in range(len(RULES)) if i not in used]
    if unused:
        print(f"unasync rules that matched nothing (remove them): {unused}", file=sys.stderr)
        failed = True
    if check and not failed:
        print("sync face is up to date")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
