#!/usr/bin/env python3
"""Where a process's CPU time goes, by thread name, over a window: a profile of which threads (lane
threads, Tokio workers, the load generator's) use how many cores. Reads /proc/PID/task/*/stat twice.

usage: thread_cpu.py SECONDS PID[:LABEL] [PID[:LABEL] ...]
Prints, per process, cores used by each thread-name group (names with their numeric suffix folded),
and the machine's idle cores over the same window (from /proc/stat).
"""
import os
import re
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def threads(pid):
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[tid] = (name, int(fields[11]) + int(fields[12]))
    return out


def idle():
    with open("/proc/stat") as f:
        cpu = f.readline().split()[1:]
    values = list(map(int, cpu))
    return values[3] + values[4], sum(values)


def main():
    seconds = float(sys.argv[1])
    procs = [(p.split(":")[0], p.split(":")[1] if ":" in p else p) for p in sys.argv[2:]]
    before = {pid: threads(pid) for pid, _ in procs}
    idle0, total0 = idle()
    start = time.time()
    time.sleep(seconds)
    after = {pid: threads(pid) for pid, _ in procs}
    idle1, total1 = idle()
    elapsed = time.time() - start
    ncpu = os.cpu_count()
    print(f"window {elapsed:.2f} s, machine: {ncpu} cores, {(idle1 - idle0) / max(total1 - total0, 1) * ncpu:.1f} idle")
    for pid, label in procs:
        groups = {}
        for tid, (name, ticks) in after[pid].items():
            used = ticks - before[pid].get(tid, (name, 0))[1]
            group = re.sub(r"[-_ ]?\d+$", "-N", name)
            groups[group] = groups.get(group, 0) + used
        total = sum(groups.values()) / TICK / elapsed
        parts = ", ".join(
            f"{g} {t / TICK / elapsed:.2f}" for g, t in sorted(groups.items(), key=lambda x: -x[1]) if t > 0
        )
        print(f"{label}: {total:.2f} cores ({parts})")


if __name__ == "__main__":
    main()
