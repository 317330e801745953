#!/usr/bin/env python3
"""Summarises dgrid-bench-simulate reports as the Markdown table of docs/placement.md: SLO
attainment at one factor for dgrid (edf groups), its ablations (dgrid-fifo: the same policy on
fifo groups) and the best fixed-layout baseline, per
topology / SLO unit / arrival process / load.

    bench/simulate_summary.py bench/results/2026-11-28-simulate-*.json [--factor 1.2x]

With --seeds, the reports are runs of the same configurations under several seeds
(dgrid-bench-simulate --seed N) and the table gives, per topology / SLO unit / arrival process /
load, the spread of dgrid's attainment over the best fixed layout's.
"""
import argparse
import collections
import json


def cells(report, factor):
    """Per (arrival process, load) of a report: its runs by configuration, their attainment at
    `factor`, and the name of the best fixed layout."""
    by_cell = collections.OrderedDict()
    for run in report["runs"]:
        by_cell.setdefault((run["process"], run["load_vs_sp1_capacity"]), {})[run["policy"]] = run
    for cell, runs in by_cell.items():
        at = {name: r["slo_attainment"][factor] for name, r in runs.items()}
        fixed = {n: v for n, v in at.items() if n.startswith("fixed-")}
        yield cell, runs, at, max(fixed, key=fixed.get)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("reports", nargs="+")
    parser.add_argument("--factor", default="1.2x")
    parser.add_argument("--seeds", action="store_true")
    args = parser.parse_args()
    if args.seeds:
        seed_table(args)
        return
    print("| topology | SLO unit | arrivals | load | dgrid | dgrid-fifo | dgrid-nodl | planned+ll "
          "| planned+rr | best fixed | dgrid / best fixed | dgrid groups |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in args.reports:
        report = json.load(open(path))
        for (process, load), runs, at, best_name in cells(report, args.factor):
            best = at[best_name]
            ratio = f"{at['dgrid'] / best:.2f}x" if best > 0 else "n/a (0)"
            groups = collections.Counter(runs["dgrid"]["groups"])
            layout = " + ".join(f"{n}x {g}" for g, n in groups.items())
            fifo = f"{100 * at['dgrid-fifo']:.1f}%" if "dgrid-fifo" in at else "-"
            print(f"| {report['topology_name']} | {report['slo_reference']} | {process} | {load} "
                  f"| {100 * at['dgrid']:.1f}% | {fifo} | {100 * at['dgrid-nodl']:.1f}% "
                  f"| {100 * at['planned+ll']:.1f}% | {100 * at['planned+rr']:.1f}% "
                  f"| {100 * best:.1f}% ({best_name}) | {ratio} | {layout} |")


def seed_table(args):
    ratios = collections.OrderedDict()
    for path in args.reports:
        report = json.load(open(path))
        for (process, load), _, at, best_name in cells(report, args.factor):
            best = at[best_name]
            key = (report["topology_name"], report["slo_reference"], process, load)
            ratios.setdefault(key, []).append(
                (report.get("seed"), at["dgrid"], best))
    print("| topology | SLO unit | arrivals | load | seeds | dgrid | best fixed "
          "| dgrid / best fixed: min | mean | max |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (topology, unit, process, load), rows in ratios.items():
        r = [d / b for _, d, b in rows if b > 0]
        if len(rows) < 2 or not r:
            continue  # a cell only one seed ran
        dgrid = sum(d for _, d, _ in rows) / len(rows)
        best = sum(b for _, _, b in rows) / len(rows)
        print(f"| {topology} | {unit} | {process} | {load} | {len(rows)} | {100 * dgrid:.1f}% "
              f"| {100 * best:.1f}% | {min(r):.3f}x | {sum(r) / len(r):.3f}x | {max(r):.3f}x |")


if __name__ == "__main__":
    main()
