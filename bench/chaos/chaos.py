#!/usr/bin/env python3
"""dgrid's chaos benchmark: a `dgrid up` cluster under load from N clients (a bounded count of
requests each, every request with a deadline), with processes killed with SIGKILL along the way,
and a JSON report of what the clients saw.

    .venv/bin/python bench/chaos/chaos.py --encoders 2 --denoisers 2 --decoders 2 \\
        --clients 32 --requests 600 --kill encoder,denoiser,decoder \\
        --out bench/results/DATE-cpu-vm-chaos-kills.json
    .venv/bin/python bench/chaos/chaos.py ... --orchestrators 2 --kill orchestrator

--kill names the kinds to kill, one process each, in order (encoder, denoiser, decoder,
orchestrator; "none" for a run without kills). The K kills are spread over the run: kill j comes
once (j + 1) / (K + 1) of the requests have ended and the previous killed process serves again;
requests that start more than 2 x clients after that point wait until the kill is made, so every
kill lands while requests are in flight, however fast or slow the machine. Nothing waits a fixed time.

The report (JSON, and a short table on stdout): the configuration, command, commit and machine;
results ok, errors by gRPC code, unanswered requests (no answer within their deadline); per kill
what was killed and when, the requests in flight then and which of them failed, the time until the
first success of a request started after the kill, until the replacement process ran and until it
served (registered with every orchestrator; an orchestrator: listing the model again), and a
verdict per acceptance criterion:

- no request unanswered, none refused RESOURCE_EXHAUSTED;
- every error an explicit UNAVAILABLE for a request in a killed denoiser's hands (the orchestrator
  logged its denoiser call failing on that process) or held by a killed orchestrator (it had events
  back from it and was in flight at the kill); with no kills, no error at all;
- every killed process replaced and serving again within --restart-bound-s (10 s), and no other
  process restarted.

Exit status 0 when every verdict passes, 1 when one fails, 2 when the run could not be made (with
--orchestrators > 1 on a `dgrid up` without that flag: skipped, said so, exit status 3).
"""
import argparse
import collections
import datetime
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(SOURCE, "clients", "python"))
sys.path.insert(0, HERE)

from cluster import LocalCluster  # noqa: E402
from load import Load, Probe  # noqa: E402
from dgrid_client import grpc, pb, pb_grpc  # noqa: E402

ROLES = ("encoder", "denoiser", "decoder", "orchestrator")
EXIT_SKIPPED = 3


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build-dir", default=os.environ.get("DGRID_BUILD_DIR",
                                                         os.path.join(SOURCE, "build")))
    p.add_argument("--model", default="", help="model folder (default: dgrid up's embedded one)")
    p.add_argument("--encoders", type=int, default=2)
    p.add_argument("--denoisers", type=int, default=2)
    p.add_argument("--decoders", type=int, default=2)
    p.add_argument("--orchestrators", type=int, default=1)
    p.add_argument("--transport", choices=["inline", "ucx"], default="inline")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=600, help="requests per client")
    p.add_argument("--kill", default="encoder,denoiser,decoder",
                   help="kinds to kill in order, comma-separated, or 'none'")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--deadline-s", type=float, default=60.0,
                   help="gRPC deadline of every request; a call that reaches it is unanswered")
    p.add_argument("--hang-bound-s", type=float, default=30.0,
                   help="a call still running this long after its deadline is reported hung")
    p.add_argument("--restart-bound-s", type=float, default=10.0,
                   help="acceptance bar: a killed process serves again within this")
    p.add_argument("--wait-bound-s", type=float, default=120.0,
                   help="how long to wait for a replacement before giving up on it")
    p.add_argument("--seed", type=int, default=0, help="picks which process of a kind is killed")
    p.add_argument("--probe-prefix", default="",
                   help="before the denoiser kill, send a request whose id starts with this (a "
                        "prefix the denoisers' DGRID_TEST_STEP_PAUSE seam holds between steps), "
                        "wait for its first step and kill the denoiser that holds it; it must "
                        "fail UNAVAILABLE. Runs the cluster at --log-level debug")
    p.add_argument("--probe-steps", type=int, default=1000)
    p.add_argument("--machine", default="", help="a description of the machine for the report")
    p.add_argument("--note", default="", help="free text for the report (e.g. how the binaries "
                                              "were built)")
    p.add_argument("--work-dir", default="", help="cluster logs go here (default: a temp folder)")
    p.add_argument("--out", default="", help="JSON report path")
    args = p.parse_args(argv)
    args.kills = [] if args.kill in ("", "none") else args.kill.split(",")
    for role in args.kills:
        if role not in ROLES:
            p.error(f"--kill: '{role}' is not one of {', '.join(ROLES)}")
    if "orchestrator" in args.kills and args.orchestrators < 2:
        p.error("--kill orchestrator needs --orchestrators 2 or more (one must stay)")
    return args


def git(*args):
    out = subprocess.run(["git", "-C", SOURCE, *args], capture_output=True, text=True)
    return out.stdout.rstrip("\n")


def machine(note):
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), "")
    except OSError:
        pass
    gpus = []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        gpus = [line for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.TimeoutExpired):
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"description": note or f"{os.cpu_count()}-CPU machine, "
                                   f"{'GPUs: ' + '; '.join(gpus) if gpus else 'no GPU'}",
            "cpus": os.cpu_count(), "cpu_model": cpu, "memory_gib": round(memory_gib, 1),
            "gpus": gpus, "kernel": platform.release()}


def serves_model(address, timeout=1.0):
    """Whether the orchestrator at `address` lists every model as available."""
    channel = grpc.insecure_channel(address)
    try:
        models = pb_grpc.GenerationStub(channel).ListModels(pb.ListModelsRequest(),
                                                            timeout=timeout).models
        return len(models) > 0 and all(not m.unavailable for m in models)
    except grpc.RpcError:
        return False
    finally:
        channel.close()


def poll(predicate, bound_s, interval_s=0.02):
    """Calls predicate until it returns something true (returned) or bound_s passes (None)."""
    until = time.time() + bound_s
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > until:
            return None
        time.sleep(interval_s)


class KillSchedule:
    """Runs the kills on their own thread while the load runs, and records each one."""

    def __init__(self, cluster, load, args):
        self.cluster, self.load, self.args = cluster, load, args
        self.kills = []
        self.probes = []  # (kill index, Record)
        self.rng = random.Random(args.seed)
        count = len(args.kills)
        self.thresholds = [load.total * (j + 1) // (count + 1) for j in range(count)]
        self.events = [threading.Event() for _ in args.kills]
        for threshold, event in zip(self.thresholds, self.events):
            load.gate.hold_from(threshold + 2 * load.clients, event)
        self.thread = threading.Thread(target=self._run, daemon=True, name="chaos-kills")

    def start(self):
        self.thread.start()

    def _run(self):
        for j, role in enumerate(self.args.kills):
            try:
                self.load.wait_finished(self.thresholds[j])
                self.kills.append(self._kill(role, self.events[j]))
            except Exception as e:  # recorded: the report says the kill was not made
                self.kills.append({"role": role, "error": repr(e)})
            finally:
                self.events[j].set()

    def _kill(self, role, killed):
        """Kills one `role` process, sets `killed`, and waits for its replacement to serve."""
        victims = sorted((p for p in self.cluster.processes().values() if p.role == role),
                         key=lambda p: p.name)
        if not victims:
            raise RuntimeError(f"no {role} process to kill")
        bound = self.args.wait_bound_s
        probe = None
        if role == "denoiser" and self.args.probe_prefix:
            probe = Probe(self.cluster.grpc_addresses[0],
                          f"{self.args.probe_prefix}chaos-probe-{len(self.kills)}",
                          self.args.deadline_s,
                          dict(self.load.fields, num_inference_steps=self.args.probe_steps))
            self.probes.append((len(self.kills), probe.record))
            probe.start()
            if not poll(lambda: probe.record.first_step, bound):
                raise RuntimeError(f"the probe {probe.record.id} reported no step "
                                   f"({probe.record.outcome}: {probe.record.message})")
            holder = poll(lambda: self.cluster.stage_call_pid(probe.record.id, "denoiser"),
                          bound, 0.05)
            victims = [p for p in victims if p.pid == holder]
            if not victims:
                raise RuntimeError(f"the denoiser holding {probe.record.id} (pid {holder}) is "
                                   "not one of the cluster's")
        victim = self.rng.choice(victims)
        kill = {"role": role, "name": victim.name, "pid": victim.pid,
                "results_before": self.load.finished()}
        if probe is not None:
            kill["probe"] = probe.record.id
        if role == "orchestrator":
            port = victim.flag("--port")
            index = [a.rsplit(":", 1)[1] for a in self.cluster.grpc_addresses].index(port)
            kill["orchestrator_index"] = index
            kill["address"] = self.cluster.grpc_addresses[index]
        t_kill = time.time()
        os.kill(victim.pid, signal.SIGKILL)
        killed.set()
        kill["time"] = t_kill
        fresh = poll(lambda: next((p for p in self.cluster.processes().values()
                                   if p.name == victim.name and p.pid != victim.pid), None), bound)
        if fresh is None:
            kill["new_pid"] = None
            return kill
        kill["new_pid"] = fresh.pid
        kill["started_s"] = time.time() - t_kill
        if role == "orchestrator":
            address = kill["address"]
            served = poll(lambda: serves_model(address) and time.time(), bound, 0.05)
            kill["serving_s"] = None if served is None else served - t_kill
        else:
            logs = len(self.cluster.grpc_addresses)

            def registered():
                times = {}
                for log, when, r, _, pid in self.cluster.followed_registrations():
                    if r == role and pid == fresh.pid:
                        times.setdefault(log, when)
                return len(times) >= logs and max(times.values())

            served = poll(registered, bound, 0.05)
            kill["serving_s"] = None if served is None else served - t_kill
        if probe is not None:
            probe.thread.join(timeout=bound)
        return kill


def analyse(args, cluster, load, kills, probes, hung, t0, t_end):
    records = load.records
    failures = cluster.stage_failures()
    killed_denoiser_pids = {k["pid"]: j for j, k in enumerate(kills)
                            if k.get("role") == "denoiser" and "time" in k}
    killed_orchestrators = [(j, k) for j, k in enumerate(kills)
                            if k.get("role") == "orchestrator" and "time" in k]

    def attribution(rec):
        if rec.outcome != "UNAVAILABLE":
            return None
        for stage, worker, pid, code, message, _ in failures.get(rec.id, []):
            if stage == "denoiser" and code == grpc.StatusCode.UNAVAILABLE.value[0] \
                    and pid in killed_denoiser_pids:
                return {"kill": killed_denoiser_pids[pid], "why": "in the killed denoiser's hands",
                        "worker": worker, "orchestrator_log": message}
        last = rec.attempts[-1]
        for j, k in killed_orchestrators:
            if last.orchestrator == k["orchestrator_index"] and last.events > 0 \
                    and last.start < k["time"] <= last.end:
                return {"kill": j, "why": "held by the killed orchestrator"}
        return None

    ok = [r for r in records if r.outcome == "OK"]
    unanswered = [r for r in records if r.outcome == "unanswered"]
    errors = [r for r in records if r.outcome not in ("OK", "unanswered")]
    in_flight_at = {j: [r for r in records if r.start < k["time"] and
                        (r.end is None or r.end > k["time"])]
                    for j, k in enumerate(kills) if "time" in k}
    error_rows = []
    for r in errors:
        row = {"id": r.id, "code": r.outcome, "message": r.message,
               "orchestrators_tried": [a.orchestrator for a in r.attempts],
               "in_flight_at_kills": [j for j, rs in in_flight_at.items() if r in rs],
               "attributed_to": attribution(r)}
        error_rows.append(row)

    kill_rows = []
    for j, k in enumerate(kills):
        row = dict(k)
        if "time" in k:
            t = k["time"]
            flying = in_flight_at[j]
            row["at_s"] = round(t - t0, 3)
            row.pop("time")
            row["in_flight"] = len(flying)
            row["in_flight_phases"] = dict(collections.Counter(r.phase_at(t) for r in flying))
            row["in_flight_failed"] = dict(collections.Counter(
                r.outcome for r in flying if r.outcome != "OK"))
            after = [r.end for r in ok if r.start >= t]
            row["first_success_s"] = round(min(after) - t, 3) if after else None
            if k["role"] == "orchestrator":
                via = [a.end for r in ok for a in r.attempts
                       if a.orchestrator == k["orchestrator_index"] and a.code == "OK"
                       and a.start >= t]
                row["first_success_via_restarted_s"] = round(min(via) - t, 3) if via else None
            for key in ("started_s", "serving_s"):
                if row.get(key) is not None:
                    row[key] = round(row[key], 3)
        kill_rows.append(row)

    restarts = cluster.restarts()
    killed_names = [k["name"] for k in kills if "time" in k]
    errors_by_code = dict(collections.Counter(r.outcome for r in errors))
    in_flight_any = {r.id for rs in in_flight_at.values() for r in rs}
    verdicts = {}

    def verdict(name, passed, detail):
        verdicts[name] = {"pass": bool(passed), "detail": detail}

    verdict("all_requests_ended", len(records) == load.total and
            all(r.outcome is not None for r in records),
            f"{len(records)} of {load.total} requests started, "
            f"{sum(r.outcome is not None for r in records)} ended")
    verdict("no_unanswered", not unanswered, f"{len(unanswered)} unanswered")
    verdict("no_resource_exhausted", "RESOURCE_EXHAUSTED" not in errors_by_code,
            f"{errors_by_code.get('RESOURCE_EXHAUSTED', 0)} RESOURCE_EXHAUSTED")
    if not args.kills:
        verdict("no_errors", not errors, f"{len(errors)} errors")
    else:
        unexplained = [row["id"] for row in error_rows if row["attributed_to"] is None]
        verdict("errors_only_in_killed_hands", not unexplained,
                f"{len(errors)} errors, {len(unexplained)} not UNAVAILABLE in a killed denoiser's "
                f"hands or held by a killed orchestrator"
                + (f": {', '.join(unexplained[:20])}" if unexplained else ""))
        back = [row.get("serving_s") for row in kill_rows]
        verdict("every_kill_replaced", all(b is not None for b in back) and
                len(kill_rows) == len(args.kills),
                f"serving again after {back} s")
        verdict(f"back_within_{args.restart_bound_s:g}s",
                all(b is not None and b <= args.restart_bound_s for b in back),
                f"serving again after {back} s (bar {args.restart_bound_s:g} s)")
    probe_rows = [{"kill": j, "id": r.id, "outcome": r.outcome, "message": r.message,
                   "attributed_to": attribution(r)} for j, r in probes]
    if args.probe_prefix and "denoiser" in args.kills:
        verdict("probe_failed_in_killed_denoiser_hands",
                len(probe_rows) == args.kills.count("denoiser") and
                all(p["attributed_to"] is not None and p["attributed_to"]["kill"] == p["kill"]
                    for p in probe_rows),
                f"{[(p['id'], p['outcome']) for p in probe_rows]}")
    unexpected = [r for r in restarts if r["name"] not in killed_names]
    verdict("restarts_only_of_killed", not unexpected and len(restarts) == len(killed_names),
            f"{len(restarts)} restarts for {len(killed_names)} kills"
            + (f"; unexpected: {unexpected}" if unexpected else ""))

    elapsed = t_end - t0
    return {
        "totals": {"requests": load.total, "started": len(records), "ok": len(ok),
                   "errors": len(errors), "unanswered": len(unanswered), "hung": len(hung),
                   "retried_on_another_orchestrator": sum(len(r.attempts) > 1 for r in records),
                   "duration_s": round(elapsed, 1),
                   "requests_per_s": round(len(records) / elapsed, 1) if elapsed > 0 else None},
        "errors_by_code": errors_by_code,
        "errors_in_flight_at_a_kill_by_code": dict(collections.Counter(
            r.outcome for r in errors if r.id in in_flight_any)),
        "errors": error_rows,
        "unanswered": [{"id": r.id, "message": r.message,
                        "phase": r.phase_at(time.time()) if r.end is None else "ended",
                        "orchestrators_tried": [a.orchestrator for a in r.attempts]}
                       for r in unanswered],
        "kills": kill_rows,
        "probes": probe_rows,
        "restarts": restarts,
        "verdicts": verdicts,
        "pass": all(v["pass"] for v in verdicts.values()),
    }


def print_table(report):
    c, t = report["config"], report["totals"]
    print(f"chaos: {c['clients']} clients x {c['requests_per_client']} requests, "
          f"{c['encoders']} encoders / {c['denoisers']} denoisers / {c['decoders']} decoders / "
          f"{c['orchestrators']} orchestrator(s), {c['width']}x{c['height']} {c['steps']} steps")
    print(f"requests {t['requests']}  ok {t['ok']}  errors {report['errors_by_code'] or 0}  "
          f"unanswered {t['unanswered']}  retried on another orchestrator "
          f"{t['retried_on_another_orchestrator']}  {t['duration_s']} s "
          f"({t['requests_per_s']} requests/s)")
    if report["kills"]:
        print(f"{'kill':<12} {'process':<16} {'at s':>7} {'in flight':>9} {'failed':>7} "
              f"{'1st ok s':>9} {'started s':>9} {'serving s':>9}")
        for k in report["kills"]:
            if "error" in k:
                print(f"{k['role']:<12} not made: {k['error']}")
                continue
            failed = sum(k.get("in_flight_failed", {}).values())
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            print(f"{k['role']:<12} {k['name'] + ' ' + str(k['pid']):<16} {k['at_s']:>7.2f} "
                  f"{k['in_flight']:>9} {failed:>7} {fmt(k.get('first_success_s')):>9} "
                  f"{fmt(k.get('started_s')):>9} {fmt(k.get('serving_s')):>9}")
    for name, v in report["verdicts"].items():
        print(f"{'PASS' if v['pass'] else 'FAIL'}  {name}: {v['detail']}")


def main(argv=None):
    args = parse_args(argv)
    dgrid = os.path.join(args.build_dir, "cli", "dgrid")
    if args.orchestrators > 1 and not LocalCluster.supports_orchestrators(dgrid):
        print(f"chaos: skipped: {dgrid} up has no --orchestrators flag, so a run with "
              f"{args.orchestrators} orchestrators cannot be made with this build", flush=True)
        return EXIT_SKIPPED
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="dgrid-chaos-")
    extra = []
    if args.transport == "ucx":
        extra = ["--transport", "ucx", "--inline-threshold-bytes", "0"]
    if args.probe_prefix:
        extra += ["--log-level", "debug"]  # the orchestrator names the denoiser of each call
    started = datetime.datetime.now(datetime.timezone.utc)
    commit = git("rev-parse", "HEAD")
    # Others' uncommitted edits the binaries may have been built with.
    changed = [line[3:] for line in git("status", "--porcelain",
                                        "--untracked-files=no").splitlines()]
    try:
        cluster = LocalCluster(dgrid, work_dir, model=args.model, encoders=args.encoders,
                               denoisers=args.denoisers, decoders=args.decoders,
                               orchestrators=args.orchestrators, extra=extra)
    except RuntimeError as e:
        print(f"chaos: the cluster did not start: {e}", flush=True)
        return 2
    try:
        at_start = [p.as_dict() for p in sorted(cluster.processes().values(),
                                                key=lambda p: p.name)]
        fields = dict(width=args.width, height=args.height, num_inference_steps=args.steps)
        load = Load(cluster.grpc_addresses, args.clients, args.requests, args.deadline_s, fields)
        schedule = KillSchedule(cluster, load, args)
        t0 = time.time()
        schedule.start()
        load.start()
        hung = load.join(args.hang_bound_s)
        schedule.thread.join(timeout=args.wait_bound_s * 2)
        t_end = time.time()
    finally:
        running, exit_status = cluster.stop()
    report = {
        "benchmark": "chaos",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.argv[0], SOURCE)] + sys.argv[1:]),
        "cluster_command": " ".join(cluster.command),
        "commit": commit,
        "tracked_files_changed_in_tree": changed,
        "dgrid_binary": {"path": dgrid, "built": datetime.datetime.fromtimestamp(
            os.path.getmtime(dgrid), datetime.timezone.utc).isoformat(timespec="seconds")},
        "machine": machine(args.machine),
        "note": args.note,
        "config": {"clients": args.clients, "requests_per_client": args.requests,
                   "encoders": args.encoders, "denoisers": args.denoisers,
                   "decoders": args.decoders, "orchestrators": args.orchestrators,
                   "model": args.model or "(embedded default)", "transport": args.transport,
                   "width": args.width, "height": args.height, "steps": args.steps,
                   "deadline_s": args.deadline_s, "kills": args.kills, "seed": args.seed,
                   "probe_prefix": args.probe_prefix,
                   "restart_bound_s": args.restart_bound_s},
        "cluster": {"grpc": cluster.grpc_addresses, "processes_at_start": at_start,
                    "logs": cluster.log_dir, "dgrid_up_ran_to_the_end": running,
                    "dgrid_up_exit_status": exit_status},
    }
    report.update(analyse(args, cluster, load, schedule.kills, schedule.probes, hung, t0,
                          t_end))
    # A crash loop makes dgrid up stop the cluster and exit non-zero before the run is over.
    report["verdicts"]["cluster_ran_to_the_end"] = {
        "pass": running and exit_status == 0,
        "detail": f"dgrid up {'was running' if running else 'had exited'} at the end, "
                  f"exit status {exit_status}"}
    report["pass"] = report["pass"] and report["verdicts"]["cluster_ran_to_the_end"]["pass"]
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    print_table(report)
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
