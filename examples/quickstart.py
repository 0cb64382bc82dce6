"""Ten lines with Emberbox's SDK (needs `emberbox server` and EMBERBOX_API_URL/_API_KEY set)."""

from emberbox import Sandbox

with Sandbox(template="base", timeout=120) as sandbox:
    result = sandbox.commands.run("python3 -c 'print(sum(range(10)))'")
    print("stdout:", result.stdout.strip())
    sandbox.files.write("/home/user/notes.txt", "hello from the host\n")
    print(sandbox.files.read("/home/user/notes.txt"), end="")
    print([entry.name for entry in sandbox.files.list("/home/user")])
