"""The cluster side of the chaos benchmark: a `dgrid up` cluster started and stopped, its processes
by name (the children of `dgrid up`, named by their log files), and what its logs say happened
(registrations, stage failures per request, restarts)."""
import datetime
import glob
import os
import re
import signal
import subprocess
import time

# "2026-12-06 23:06:07.176 I [orchestrator] registered denoiser denoiser-127.0.0.1:33915-2962 at ..."
_REGISTERED = re.compile(
    r"^(\S+ \S+) I \[orchestrator\] registered (\w+) (\S+) at ")
# "... W [orchestrator req=ID] denoiser denoiser-127.0.0.1:34587-31317 at 127.0.0.1:34587 answered 14: ..."
_STAGE_FAILED = re.compile(
    r"^(\S+ \S+) W \[orchestrator req=(\S+)\] (\w+) (\S+) at (\S+) answered (\d+): (.*)$")
# "... D [orchestrator req=ID] denoiser call on denoiser-127.0.0.1:34587-31317 (127.0.0.1:34587)"
# (debug level only)
_STAGE_CALL = re.compile(r"^\S+ \S+ D \[orchestrator req=(\S+)\] (\w+) call on (\S+) \(")
# dgrid up's own output (Supervisor in cli/up_command.cc).
_EXITED = re.compile(r"^(\S+) \(pid (\d+)\) exited \((.*)\); restarting it in (\S+)")
_RESTARTED = re.compile(r"^(\S+) restarted \(pid (\d+), restart (\d+) within a minute\)")


def log_time(stamp):
    """Unix time of a log line's local "YYYY-MM-DD HH:MM:SS.mmm" stamp."""
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def worker_pid(worker_id):
    """A worker id ends with its process id ("denoiser-127.0.0.1:33915-2962")."""
    tail = worker_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


class LogFollower:
    """The lines appended to a log file since the last call (a partial last line waits)."""

    def __init__(self, path):
        self.path = path
        self._offset = 0
        self._partial = b""

    def new_lines(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [line.decode(errors="replace") for line in lines]


class Process:
    def __init__(self, name, role, pid, args):
        self.name, self.role, self.pid, self.args = name, role, pid, args

    def flag(self, name):
        """The value of `--name value` on its command line, or None."""
        return next((self.args[i + 1] for i in range(len(self.args) - 1)
                     if self.args[i] == name), None)

    def as_dict(self):
        return {"name": self.name, "role": self.role, "pid": self.pid}


class LocalCluster:
    """`dgrid up` on free loopback ports, its output in <work_dir>/up.log and the processes' logs in
    <work_dir>/logs. `orchestrators` > 1 passes --orchestrators (see supports_orchestrators)."""

    def __init__(self, dgrid, work_dir, model=None, encoders=1, denoisers=1, decoders=1,
                 orchestrators=1, extra=(), ready_timeout_s=300):
        self.dgrid = dgrid
        self.work_dir = work_dir
        self.log_dir = os.path.join(work_dir, "logs")
        self.ready_file = os.path.join(work_dir, "ready")
        os.makedirs(work_dir, exist_ok=True)
        self.command = [dgrid, "up", "--port", "0", "--http-port", "0",
                        "--encoders", str(encoders), "--denoisers", str(denoisers),
                        "--decoders", str(decoders), "--log-dir", self.log_dir,
                        "--ready-file", self.ready_file]
        if model:
            self.command += ["--model", model]
        if orchestrators > 1:
            self.command += ["--orchestrators", str(orchestrators)]
        self.command += list(extra)
        self.up_log = os.path.join(work_dir, "up.log")
        self._up_out = open(self.up_log, "w")
        self.proc = subprocess.Popen(self.command, stdout=self._up_out, stderr=subprocess.STDOUT)
        deadline = time.time() + ready_timeout_s
        while not os.path.exists(self.ready_file):
            if self.proc.poll() is not None:
                raise RuntimeError("dgrid up failed:\n" + self.up_output())
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"dgrid up was not ready within {ready_timeout_s} s:\n"
                                   + self.up_output())
            time.sleep(0.1)
        with open(self.ready_file) as f:  # written whole (rename) once every orchestrator serves
            lines = [line.split() for line in f.read().splitlines() if line.strip()]
        self.grpc_addresses = [line[0] for line in lines]
        self.http_addresses = [line[1] for line in lines]
        self._followers = {}
        self._registered = []  # (log file, unix time, role, worker id, pid), as followed

    def followed_registrations(self):
        """Registrations the orchestrators logged so far, read incrementally (cheap to poll)."""
        for path in self.orchestrator_logs():
            follower = self._followers.setdefault(path, LogFollower(path))
            for line in follower.new_lines():
                m = _REGISTERED.match(line)
                if m:
                    self._registered.append((os.path.basename(path), log_time(m.group(1)),
                                             m.group(2), m.group(3), worker_pid(m.group(3))))
        return self._registered

    @staticmethod
    def supports_orchestrators(dgrid):
        """Whether this `dgrid up` takes --orchestrators N."""
        out = subprocess.run([dgrid, "up", "--help"], capture_output=True, text=True)
        return "--orchestrators" in out.stdout + out.stderr

    def up_output(self):
        with open(self.up_log) as f:
            return f.read()

    def processes(self):
        """The cluster's processes now, by name ("encoder-1", "orchestrator", ...): the children of
        `dgrid up`, each named by the log file its output goes to."""
        found = {}
        for children in glob.glob(f"/proc/{self.proc.pid}/task/*/children"):
            try:
                with open(children) as f:
                    pids = [int(p) for p in f.read().split()]
            except OSError:
                continue
            for pid in pids:
                try:
                    log = os.readlink(f"/proc/{pid}/fd/1")
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        argv = [a.decode() for a in f.read().split(b"\0")[:-1]]
                    program = os.path.basename(argv[0]) if argv else ""
                except OSError:
                    continue  # gone meanwhile, or not yet exec'd
                if not program.startswith("dgrid-") or not log.endswith(".log"):
                    continue
                name = os.path.basename(log)[:-len(".log")]
                found[name] = Process(name, program[len("dgrid-"):], pid, argv[1:])
        return found

    def orchestrator_logs(self):
        return sorted(glob.glob(os.path.join(self.log_dir, "orchestrator*.log")))

    def _lines(self, path):
        try:
            with open(path, errors="replace") as f:
                return f.read().splitlines()
        except OSError:
            return []

    def stage_failures(self):
        """{request id: [(stage, worker id, worker pid, grpc code number, message, unix time)]}
        for every stage call the orchestrators logged as failed."""
        out = {}
        for path in self.orchestrator_logs():
            for line in self._lines(path):
                m = _STAGE_FAILED.match(line)
                if m:
                    out.setdefault(m.group(2), []).append(
                        (m.group(3), m.group(4), worker_pid(m.group(4)), int(m.group(6)),
                         m.group(7), log_time(m.group(1))))
        return out

    def stage_call_pid(self, request_id, stage):
        """The pid of the worker the orchestrators last called for `stage` of a request, from
        their debug lines (dgrid up --log-level debug); None before that call."""
        pid = None
        for path in self.orchestrator_logs():
            for line in self._lines(path):
                m = _STAGE_CALL.match(line)
                if m and m.group(1) == request_id and m.group(2) == stage:
                    pid = worker_pid(m.group(3))
        return pid

    def restarts(self):
        """What dgrid up's supervisor reported: [{name, old_pid, exit, new_pid}] in order."""
        out, pending = [], {}
        for line in self.up_output().splitlines():
            m = _EXITED.match(line)
            if m:
                pending[m.group(1)] = {"name": m.group(1), "old_pid": int(m.group(2)),
                                       "exit": m.group(3), "backoff": m.group(4),
                                       "new_pid": None}
                out.append(pending[m.group(1)])
                continue
            m = _RESTARTED.match(line)
            if m and m.group(1) in pending:
                pending.pop(m.group(1))["new_pid"] = int(m.group(2))
        return out

    def stop(self):
        """Stops the cluster (SIGINT: dgrid up stops its processes, stages first). Returns whether
        dgrid up was still running, and its exit status."""
        running = self.proc.poll() is None
        if running:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._up_out.close()
        return running, code
