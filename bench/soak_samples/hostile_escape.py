import os
import socket

# Tries the network, host secrets and a daemonized grandchild: all must fail or
# die with the sandbox, and the grade is still the honest one.
leaks = []
try:
    socket.create_connection(("127.0.0.1", 18040), timeout=0.2)
    leaks.append("network")
except OSError:
    pass
for path in ("/etc/shadow", "/root/.ssh/id_rsa", "/proc/1/environ"):
    try:
        with open(path, "rb") as f:
            if f.read(1):
                leaks.append(path)
    except OSError:
        pass
try:
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            import time
            time.sleep(3600)
        os._exit(0)
except OSError:
    pass


def clamp(x, lo, hi):
    return max(lo, min(x, hi))
