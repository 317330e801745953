#!/usr/bin/env python3
"""What admission and ordering can reach on ONE denoiser group at tight deadlines: a small model,
outside the simulator, of the 8x H100 node run as a single Ulysses-8 group with deadlines of 1.2x
the best layout's latency (docs/placement.md, `best-layout` SLO unit). It answers "how far is
dgrid's 77% from what any scheduler of this kind could do?" by running, on the same arrivals:

  fifo            arrival order, no admission control (fixed SP=8)
  fifo+refuse     arrival order, refuse a request that would finish late
  step-edf        earliest deadline first, switching only between steps, refuse a request that
                  would finish late or make an admitted one late (dgrid's edf groups)
  step-edf+batch  the same, and every step also advances held requests of the same resolution as
                  the one chosen (per-sample timesteps), at the cost of a larger batch
  edf             earliest deadline first, preempting at any instant (an upper bound for the
                  step-level variants)
  edf+drop        the same, but when the held set is infeasible the request with the most work left
                  is dropped (Moore-Hodgson); drops admitted requests, which dgrid does not

Service times are planner::CostModel's (built-in H100 calibration) on cfg1-ring1-ulysses8; the
reference is each class's best plannable layout; a batch step costs one request's step plus, per
extra sample, the step-time difference between CFG and no CFG (CFG is a batch of two).
Arrivals are Poisson at `--load` of the node's SP=1 throughput; classes and shares as
planner::DefaultMixedWorkload.

    bench/single_group_bound.py [--load 0.3] [--requests 4000] [--seeds 1,2,3]
"""
import argparse
import math
import random

# 512, 512-cfg, 1024, 1024-cfg, 2048, 2048-cfg
SHARE = [0.2, 0.2, 0.2, 0.2, 0.1, 0.1]
SERVICE_MS = [632, 807, 1055, 1652, 3728, 6999]  # on cfg1-ring1-ulysses8
REFERENCE_MS = [632, 803, 1055, 1640, 3728, 6953]  # best plannable layout
SP1_MEAN_MS = 11311  # mean service of the mix on one GPU
STEPS = 28
RESOLUTION = [0, 0, 1, 1, 2, 2]
SAMPLES = [1, 2, 1, 2, 1, 2]
STEP_MS = [632 / STEPS, 1055 / STEPS, 3728 / STEPS]
EXTRA_SAMPLE_MS = [(807 - 632) / STEPS, (1652 - 1055) / STEPS, (6999 - 3728) / STEPS]


def arrivals(n, rate_per_s, seed):
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate_per_s / 1000)
        out.append((t, rng.choices(range(6), SHARE)[0]))
    return out


def fifo(trace, factor, refuse):
    free, met = 0.0, 0
    for t, c in trace:
        end = max(free, t) + SERVICE_MS[c]
        due = t + factor * REFERENCE_MS[c]
        if refuse and end > due:
            continue
        free = end
        met += end <= due + 1e-6
    return met / len(trace)


def edf_feasible(jobs, now):
    t = now
    for due, left, *_ in sorted(jobs):
        t += left
        if t > due + 1e-6:
            return False
    return True


def edf(trace, factor, drop):
    """Preemptive at any instant. jobs: [due, work left, arrival index]."""
    jobs, now, met = [], 0.0, 0

    def advance(to):
        nonlocal now, met
        while jobs and now < to:
            jobs.sort()
            job = jobs[0]
            d = min(job[1], to - now)
            job[1] -= d
            now += d
            if job[1] <= 1e-9:
                met += now <= job[0] + 1e-6
                jobs.pop(0)
        now = max(now, to)

    for i, (t, c) in enumerate(trace):
        advance(t)
        candidate = jobs + [[t + factor * REFERENCE_MS[c], SERVICE_MS[c], i]]
        if drop:
            while not edf_feasible(candidate, now):
                candidate.remove(max(candidate, key=lambda j: j[1]))
            jobs[:] = candidate
        elif edf_feasible(candidate, now):
            jobs[:] = candidate
    advance(math.inf)
    return met / len(trace)


def step_edf(trace, factor, batching):
    """Switches only between steps. jobs: dicts with due, steps left, class, index."""

    def chosen(jobs):
        head = min(jobs, key=lambda j: (j["due"], j["i"]))
        if not batching:
            return [head]
        return [j for j in jobs if RESOLUTION[j["c"]] == RESOLUTION[head["c"]]]

    def step_ms(batch):
        r = RESOLUTION[batch[0]["c"]]
        return STEP_MS[r] + (sum(SAMPLES[j["c"]] for j in batch) - 1) * EXTRA_SAMPLE_MS[r]

    def finish_times(jobs, start):
        jobs = [dict(j) for j in jobs]
        t, out = start, {}
        while jobs:
            batch = chosen(jobs)
            t += step_ms(batch)
            for j in batch:
                j["left"] -= 1
                if j["left"] == 0:
                    out[j["i"]] = t
                    jobs.remove(j)
        return out

    jobs, met, running, step_end, i = [], 0, None, 0.0, 0
    now = 0.0
    while i < len(trace) or jobs:
        next_arrival = trace[i][0] if i < len(trace) else math.inf
        if running is not None and step_end <= next_arrival:
            now = step_end
            for j in running:
                j["left"] -= 1
                if j["left"] == 0:
                    met += now <= j["due"] + 1e-6
                    jobs.remove(j)
            running = None
        else:
            t, c = trace[i]
            now = t
            new = {"due": t + factor * REFERENCE_MS[c], "left": STEPS, "c": c, "i": i}
            i += 1
            # The current step ends first; plan the rest with and without the newcomer.
            held = [dict(j) for j in jobs]
            start = now
            if running is not None:
                start = step_end
                in_step = {j["i"] for j in running}
                for j in held:
                    j["left"] -= j["i"] in in_step
                held = [j for j in held if j["left"] > 0]
            before = finish_times(held, start)
            after = finish_times(held + [new], start)
            late = any(before[j["i"]] <= j["due"] + 1e-6 < after[j["i"]] for j in held)
            if after[new["i"]] <= new["due"] + 1e-6 and not late:
                jobs.append(new)
        if running is None and jobs:
            running = chosen(jobs)
            step_end = now + step_ms(running)
    return met / len(trace)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--load", type=float, default=0.3)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--factor", type=float, default=1.2)
    args = parser.parse_args()
    rate = args.load * 8 / SP1_MEAN_MS * 1000
    variants = {
        "fifo": lambda tr: fifo(tr, args.factor, refuse=False),
        "fifo+refuse": lambda tr: fifo(tr, args.factor, refuse=True),
        "step-edf": lambda tr: step_edf(tr, args.factor, batching=False),
        "step-edf+batch": lambda tr: step_edf(tr, args.factor, batching=True),
        "edf": lambda tr: edf(tr, args.factor, drop=False),
        "edf+drop": lambda tr: edf(tr, args.factor, drop=True),
    }
    print(f"one Ulysses-8 group, load {args.load}, deadlines {args.factor}x best layout, "
          f"{args.requests} requests; within deadline:")
    print("| seed | " + " | ".join(variants) + " |")
    print("|---" * (len(variants) + 1) + "|")
    for seed in (int(s) for s in args.seeds.split(",")):
        trace = arrivals(args.requests, rate, seed)
        cells = [f"{100 * run(trace):.1f}%" for run in variants.values()]
        print(f"| {seed} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
