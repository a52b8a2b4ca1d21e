#!/usr/bin/env python3
"""NFStream's packets per second on a capture file, for the side-by-side with vknf's traffic path
(bench/flows/run_pcap_bench.sh). NFStream runs in its fastest configuration that still meters
flows: no nDPI dissection (n_dissections=0), no statistical or early-packet (SPLT) features, one
meter process (n_meters=1), so the comparison is per core. Its flows are only counted.

Reports, per repetition and as medians: wall time, and CPU time of this process and its meter
process together (getrusage of self and of the waited-for children), each as packets per second.

Usage: nfstream_bench.py CAPTURE [--reps N] [--json OUT]
"""

import argparse
import json
import resource
import statistics
import time

from nfstream import NFStreamer


def cpu_seconds():
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def one_run(path):
    streamer = NFStreamer(
        source=path,
        n_dissections=0,
        statistical_analysis=False,
        splt_analysis=0,
        n_meters=1,
        accounting_mode=1,
    )
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    flows = packets = 0
    for flow in streamer:
        flows += 1
        packets += flow.bidirectional_packets
    return time.perf_counter() - wall0, cpu_seconds() - cpu0, flows, packets


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("capture")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--packets", type=int, help="the file's packet count (default: NFStream's flow packet sum)")
    parser.add_argument("--json")
    args = parser.parse_args()
    runs = []
    for rep in range(max(1, args.reps)):
        wall, cpu, flows, packets = one_run(args.capture)
        total = args.packets or packets
        runs.append({"wall_s": wall, "cpu_s": cpu, "flows": flows, "flow_packets": packets,
                     "pps_wall": total / wall, "pps_cpu": total / cpu})
        print(f"run {rep}: {flows} flows, {packets} packets in flows; {wall:.2f} s wall, {cpu:.2f} s CPU: "
              f"{total / cpu / 1e6:.3f} M packets/s per CPU-second, {total / wall / 1e6:.3f} M wall", flush=True)
    summary = {
        "pps_cpu_median": statistics.median(r["pps_cpu"] for r in runs),
        "pps_wall_median": statistics.median(r["pps_wall"] for r in runs),
        "runs": runs,
    }
    print(f"NFStream (n_meters=1, n_dissections=0, statistical_analysis=False): median "
          f"{summary['pps_cpu_median'] / 1e6:.3f} M packets/s per CPU-second, "
          f"{summary['pps_wall_median'] / 1e6:.3f} M packets/s wall, over {len(runs)} runs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
