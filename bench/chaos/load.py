"""The client side of the chaos benchmark: N client threads, each sending a bounded count of
requests one after another through the Python client's stubs, every request with a deadline.

With several orchestrators each client has a home orchestrator (client i: i mod count) and, when a
call fails UNAVAILABLE before any event came back (the orchestrator is gone or not yet back), tries
the request on the next orchestrator, as a client behind a Kubernetes Service would. A call that had
events back and then failed was held by that orchestrator: it is not tried again.

Requests are numbered in the order they start. A Gate can hold the start of request n until an event
(the kill scheduled before it) has happened, so that kills land while requests are in flight
whatever the machine's speed."""
import threading
import time

from dgrid_client import grpc, pb, pb_grpc

MAX_MESSAGE_BYTES = 512 * 1024 * 1024
# A dead orchestrator's channel retries its connection soon, so that its clients reach it again
# within about a second of its return (gRPC's default back-off grows to two minutes).
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000)]

PROMPTS = ["a red circle on a blue background", "a green square", "a yellow star on white",
           "a blue triangle on a grey background", "an orange ring", "a purple cross"]


class Attempt:
    """One call of a request on one orchestrator."""
    __slots__ = ("orchestrator", "start", "end", "code", "events")

    def __init__(self, orchestrator, start):
        self.orchestrator, self.start, self.end, self.code, self.events = (
            orchestrator, start, None, None, 0)


class Record:
    """One request: its attempts, what came back, and when (time.time())."""
    __slots__ = ("id", "client", "index", "start", "end", "outcome", "message", "attempts",
                 "first_event", "encoded", "first_step", "decoded")

    def __init__(self, request_id, client, index, start):
        self.id, self.client, self.index, self.start = request_id, client, index, start
        self.end = self.outcome = self.message = None
        self.first_event = self.encoded = self.first_step = self.decoded = None
        self.attempts = []

    def phase_at(self, t):
        """Where the request stood at time t as the client saw it: not-started, sent (no event
        yet), accepted, encoded, denoising (a step seen), decoded, or done."""
        if t < self.start:
            return "not-started"
        if self.end is not None and self.end <= t:
            return "done"
        for name, when in (("decoded", self.decoded), ("denoising", self.first_step),
                           ("encoded", self.encoded), ("accepted", self.first_event)):
            if when is not None and when <= t:
                return name
        return "sent"


class Gate:
    """Holds the start of requests numbered >= a bound until the event guarding it is set."""

    def __init__(self):
        self._cond = threading.Condition()
        self._bounds = []  # [(first held index, threading.Event)]

    def hold_from(self, index, event):
        with self._cond:
            self._bounds.append((index, event))

    def wait(self, index):
        for bound, event in self._bounds:
            if index >= bound:
                event.wait()


class Probe:
    """One request on its own thread, apart from the load (e.g. a long one a test seam holds
    mid-denoise)."""

    def __init__(self, address, request_id, deadline_s, fields):
        self.record = Record(request_id, -1, -1, time.time())
        self._request = pb.GenerateRequest(request_id=request_id, prompt=PROMPTS[0], seed=0,
                                           **fields)
        self._address, self._deadline_s = address, deadline_s
        self.thread = threading.Thread(target=self._run, daemon=True, name=request_id)

    def start(self):
        self.thread.start()

    def _run(self):
        channel = grpc.insecure_channel(self._address, options=CHANNEL_OPTIONS)
        try:
            self.record.start = time.time()
            call(self.record, self._request, [pb_grpc.GenerationStub(channel)], 0,
                 self._deadline_s)
        finally:
            channel.close()


class Load:
    def __init__(self, addresses, clients, requests, deadline_s, fields, id_prefix="chaos"):
        self.addresses = addresses
        self.clients = clients
        self.requests = requests
        self.deadline_s = deadline_s
        self.fields = fields
        self.id_prefix = id_prefix
        self.gate = Gate()
        self.records = []
        self._lock = threading.Condition()
        self._next_index = 0
        self._finished = 0
        self._current = [None] * clients  # the record each client is on
        self._threads = []

    @property
    def total(self):
        return self.clients * self.requests

    def start(self):
        for i in range(self.clients):
            t = threading.Thread(target=self._client, args=(i,), daemon=True,
                                 name=f"chaos-client-{i}")
            t.start()
            self._threads.append(t)

    def finished(self):
        with self._lock:
            return self._finished

    def wait_finished(self, count, timeout=None):
        """Waits until `count` requests have ended (or all have); False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._finished >= min(count, self.total), timeout)

    def join(self, hang_bound_s):
        """Waits for every client to end. A client whose current request has been running longer
        than its deadline plus `hang_bound_s` is hung: its request is marked unanswered and the
        client is no longer waited for. Returns the hung records."""
        hung = []
        while True:
            alive = [i for i, t in enumerate(self._threads) if t.is_alive()]
            now = time.time()
            with self._lock:
                waiting = []
                for i in alive:
                    rec = self._current[i]
                    if rec is not None and rec.end is None and \
                            now - rec.start > self.deadline_s + hang_bound_s:
                        if rec.outcome is None:
                            rec.outcome = "unanswered"
                            rec.message = (f"the call had not returned {now - rec.start:.1f} s "
                                           "after it started")
                            hung.append(rec)
                    else:
                        waiting.append(i)
            if not waiting:
                return hung
            self._threads[waiting[0]].join(timeout=1.0)

    def _client(self, i):
        channels = [grpc.insecure_channel(a, options=CHANNEL_OPTIONS) for a in self.addresses]
        stubs = [pb_grpc.GenerationStub(c) for c in channels]
        home = i % len(self.addresses)
        try:
            for k in range(self.requests):
                with self._lock:
                    index = self._next_index
                    self._next_index += 1
                self.gate.wait(index)
                rec = Record(f"{self.id_prefix}-{i}-{k}", i, index, time.time())
                with self._lock:
                    self.records.append(rec)
                    self._current[i] = rec
                request = pb.GenerateRequest(request_id=rec.id, prompt=PROMPTS[index % len(PROMPTS)],
                                             seed=index, **self.fields)
                call(rec, request, stubs, home, self.deadline_s)
                with self._lock:
                    self._finished += 1
                    self._lock.notify_all()
        finally:
            for c in channels:
                c.close()

def call(rec, request, stubs, home, deadline_s):
    """Runs one request into `rec`: on stubs[home] first, then (UNAVAILABLE before any event) on
    the next orchestrators."""
    order = [(home + j) % len(stubs) for j in range(len(stubs))]
    for orchestrator in order:
        attempt = Attempt(orchestrator, time.time())
        rec.attempts.append(attempt)
        try:
            got_result = False
            for event in stubs[orchestrator].Generate(request, timeout=deadline_s):
                now = time.time()
                attempt.events += 1
                if rec.first_event is None:
                    rec.first_event = now
                kind = event.WhichOneof("event")
                if kind == "encoded" and rec.encoded is None:
                    rec.encoded = now
                elif kind == "step" and rec.first_step is None:
                    rec.first_step = now
                elif kind == "decoded" and rec.decoded is None:
                    rec.decoded = now
                elif kind == "result":
                    got_result = True
            attempt.end = rec.end = time.time()
            attempt.code = "OK" if got_result else "NO_RESULT"
            rec.outcome = attempt.code
            if not got_result:
                rec.message = "the stream ended without a result"
            return
        except grpc.RpcError as e:
            attempt.end = rec.end = time.time()
            attempt.code = e.code().name
            rec.message = e.details()
            # Only our own deadline ends a call with DEADLINE_EXCEEDED: nothing answered.
            rec.outcome = "unanswered" if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED \
                else attempt.code
            if e.code() != grpc.StatusCode.UNAVAILABLE or attempt.events > 0:
                return
            # Nothing came back from this orchestrator: try the request on the next one.
