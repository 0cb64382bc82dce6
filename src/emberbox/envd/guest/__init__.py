"""What envd does for the sandbox beyond serving its protocol (standard library only):
forwarding loopback-only ports, the ``sudo`` broker, the guest's OOM killer and the template's
start command (``duties.py``). They live in envd, not in a supervisor process of their own: a
second Python interpreter per sandbox cost ~10 MiB and every restore had to wake it."""
