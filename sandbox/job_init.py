"""pid 1 of a cold bwrap job when no cgroup holds the job (rlimit mode):
`python3 -I -S job_init.py REPORT_FD NPROC -- ARGV...` (bwrap --as-pid-1;
REPORT_FD -1: no report).

Stdlib only; it never runs student code itself. It sets RLIMIT_NPROC here,
inside the job's user namespace, where it counts the job's processes only
(set before bwrap creates that namespace, it would be checked against every
process of the caller's uid on the host as well). Then it forks the job (pid
2, like a fork-server job), reaps every process of the namespace, and when
the job exits writes `cpu_us maxrss_kb` (the CPU time and largest resident
size of all it reaped: the job's usage, which no cgroup accounts for here)
to REPORT_FD, and exits with the job's status (128+N for signal N, like
bwrap's own init). The namespace, and whatever the job left running, dies
with it. The job does not inherit REPORT_FD; the host reads the report as
data from the sandbox: it only accounts, it can never improve a verdict.
"""

import os
import resource
import sys

import _signal


def main():
    report, nproc = int(sys.argv[1]), int(sys.argv[2])
    argv = sys.argv[4:]
    # pid 1 ignores signals it has no handler for; Python's own SIGINT handler aside.
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    job = os.fork()
    if job == 0:
        if report >= 0:
            os.close(report)
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(2, ("%s: %s\n" % (argv[0], exc.strerror)).encode("utf-8", "replace"))
        os._exit(127)
    cpu = 0.0
    rss = 0
    code = -9
    while True:
        try:
            pid, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        cpu += usage.ru_utime + usage.ru_stime
        rss = max(rss, usage.ru_maxrss)
        if pid == job:
            code = os.waitstatus_to_exitcode(status)
            break
    if report >= 0:
        try:
            os.write(report, b"%d %d\n" % (cpu * 1e6, rss))
        except OSError:
            pass
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
