"""Peak host memory of this process, for the benchmarks that compare it against a peer's.

Read from ``VmHWM`` in ``/proc/self/status``. ``ru_maxrss`` would not do: Linux carries it across fork and exec, so a
child started by a large parent reports the parent's peak. No project imports: the peer scripts, which run by path
under another interpreter, import it from their own directory.
"""


def peak_rss_mib() -> float:
    """This process's peak resident set in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
