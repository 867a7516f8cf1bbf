"""tidal_env - serve a custom tidal environment from Python.

A thin ctypes binding of libtidal_env (envs/sdk/tidal_env.h): the library
connects to NATS, subscribes to ``tidal.env.<name>`` in its queue group,
decodes every EnvRequest and calls your Python function; whatever happens -
a request that does not decode, an exception in your code, a non-finite
reward - the caller gets exactly one EnvResponse (docs/protocol.md).
Standard library only.

A single-turn reward in five lines::

    import tidal_env

    @tidal_env.reward("my_env")
    def score(prompt, completion, task):      # task: the dataset row, a dict
        return 1.0 if completion.strip().endswith(str(task["answer"])) else 0.0

    tidal_env.serve()     # --bus URL (else $TIDAL_BUS), --concurrency N; until SIGINT / SIGTERM

A multi-turn environment answers RESET and every STEP itself::

    @tidal_env.env("guess")
    def step(request):                        # request.op is tidal_env.RESET or tidal_env.STEP
        if request.op == tidal_env.RESET:
            return tidal_env.Step(observation="Guess a number.")
        ok = request.action.strip() == str(request.task["n"])
        return tidal_env.Step(reward=float(ok), done=ok or request.turn >= 3,
                              observation="" if ok else "Wrong, again.",
                              metrics={"correct": float(ok)})

Return values: a number (the reward; for ``@env`` it also ends the episode),
a :class:`Step`, or ``None`` (an empty response: reward 0, not done). For
``@reward`` functions RESET is answered with an empty response and every
STEP is ``done``. An exception becomes the response's ``error``
("ValueError: ..."), which the caller retries and then records as an
environment error; the process keeps serving.

The library is found at ``$TIDAL_ENV_LIB``, else ``build/libtidal_env.so`` of
the source tree this file sits in, else through ``ctypes.util.find_library``.
"""

import argparse
import ctypes
import ctypes.util
import json
import math
import os
import select
import signal
import sys
import threading
import time
import traceback

__all__ = [
    "RESET", "STEP", "Step", "Request", "TidalEnvError", "Server",
    "reward", "env", "serve", "registered", "library",
]

RESET = "reset"
STEP = "step"

_OP_RESET = 1  # TIDAL_ENV_OP_RESET
_OP_STEP = 2   # TIDAL_ENV_OP_STEP
_OPS = {_OP_RESET: RESET, _OP_STEP: STEP}

DEFAULT_BUS = "nats://127.0.0.1:4222"


class TidalEnvError(RuntimeError):
    """A libtidal_env call failed (the message is the library's reason)."""


class Step:
    """The answer to one request.

    reward: this step's reward (finite); the sample's reward is the sum over
        its STEP answers.
    done: the episode is over.
    observation: text appended to the model's context before its next turn.
    metrics: named values (reward parts, diagnostics); the last answer's
        become the trajectory's reward components.
    """

    __slots__ = ("reward", "done", "observation", "metrics")

    def __init__(self, reward=0.0, done=False, observation="", metrics=None):
        self.reward = reward
        self.done = done
        self.observation = observation
        self.metrics = metrics

    def __repr__(self):
        return "Step(reward=%r, done=%r, observation=%r, metrics=%r)" % (
            self.reward, self.done, self.observation, self.metrics)


class Request:
    """One request as an environment sees it.

    op: RESET or STEP; turn: 0 for RESET, 1, 2, ... for the steps of an
    episode; task: the dataset row (a dict parsed from task_json); action:
    the model's text for this turn ("" for RESET); action_tokens: the same as
    token ids (may be empty); session: the episode's opaque id; env: the
    environment's name.
    """

    __slots__ = ("env", "session", "op", "turn", "task_json", "action", "action_tokens", "_task")

    def __init__(self, env, session, op, turn, task_json, action, action_tokens):
        self.env = env
        self.session = session
        self.op = op
        self.turn = turn
        self.task_json = task_json
        self.action = action
        self.action_tokens = action_tokens
        self._task = None

    @property
    def task(self):
        """The task as a dict (parsed on first use)."""
        if self._task is None:
            try:
                task = json.loads(self.task_json) if self.task_json else {}
            except ValueError as e:
                raise ValueError("task_json is not valid JSON: %s" % e) from None
            if not isinstance(task, dict):
                raise ValueError("task_json is not a JSON object")
            self._task = task
        return self._task

    @property
    def prompt(self):
        """task["prompt"], or "" when the task has none."""
        p = self.task.get("prompt", "")
        return p if isinstance(p, str) else str(p)

    def __repr__(self):
        return "Request(env=%r, op=%r, turn=%r, task_json=%r, action=%r)" % (
            self.env, self.op, self.turn, self.task_json, self.action)


# ---------------------------------------------------------------- the library

class _CRequest(ctypes.Structure):
    _fields_ = [
        ("env", ctypes.c_char_p),
        ("session", ctypes.c_char_p),
        ("op", ctypes.c_int),
        ("task_json", ctypes.c_char_p),
        ("action_text", ctypes.c_char_p),
        ("action_tokens", ctypes.POINTER(ctypes.c_uint32)),
        ("n_action_tokens", ctypes.c_size_t),
        ("turn", ctypes.c_uint32),
    ]


class _COptions(ctypes.Structure):
    _fields_ = [
        ("url", ctypes.c_char_p),
        ("name", ctypes.c_char_p),
        ("concurrency", ctypes.c_int),
        ("max_request_bytes", ctypes.c_size_t),
        ("user", ctypes.c_char_p),
        ("password", ctypes.c_char_p),
        ("token", ctypes.c_char_p),
        ("creds_file", ctypes.c_char_p),
        ("tls_ca", ctypes.c_char_p),
        ("tls_cert", ctypes.c_char_p),
        ("tls_key", ctypes.c_char_p),
    ]


# int (*tidal_env_handler)(void *user, const tidal_env_request *rq, tidal_env_response *rsp)
_HANDLER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(_CRequest), ctypes.c_void_p)

_lib = None
_lib_lock = threading.Lock()


def _candidates():
    env = os.environ.get("TIDAL_ENV_LIB")
    if env:
        return [env]
    here = os.path.dirname(os.path.abspath(__file__))
    out = [os.path.normpath(os.path.join(here, "..", "..", "build", "libtidal_env.so"))]
    found = ctypes.util.find_library("tidal_env")
    if found:
        out.append(found)
    return out


def library():
    """The loaded libtidal_env (a ctypes.CDLL), loading it on first use."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        tried = []
        lib = None
        for path in _candidates():
            if os.sep in path and not os.path.exists(path):
                tried.append("%s (no such file)" % path)
                continue
            try:
                lib = ctypes.CDLL(path)
                break
            except OSError as e:
                tried.append("%s (%s)" % (path, e))
        if lib is None:
            raise TidalEnvError(
                "cannot load libtidal_env: tried %s; build it with `make` in the tidal source "
                "tree or set TIDAL_ENV_LIB to its path" % (", ".join(tried) or "nothing"))
        c_void_p, c_int, c_double, c_char_p = ctypes.c_void_p, ctypes.c_int, ctypes.c_double, ctypes.c_char_p
        for fn, args in (("tidal_env_set_reward", [c_void_p, c_double]),
                         ("tidal_env_set_done", [c_void_p, c_int]),
                         ("tidal_env_set_observation", [c_void_p, c_char_p]),
                         ("tidal_env_add_metric", [c_void_p, c_char_p, c_double]),
                         ("tidal_env_set_error", [c_void_p, c_char_p])):
            f = getattr(lib, fn)
            f.argtypes = args
            f.restype = c_int
        lib.tidal_env_start.argtypes = [ctypes.POINTER(_COptions), _HANDLER, c_void_p,
                                        ctypes.POINTER(c_void_p)]
        lib.tidal_env_start.restype = c_int
        lib.tidal_env_stop.argtypes = [c_void_p]
        lib.tidal_env_stop.restype = None
        lib.tidal_env_served.argtypes = [c_void_p]
        lib.tidal_env_served.restype = ctypes.c_uint64
        lib.tidal_env_failed.argtypes = [c_void_p]
        lib.tidal_env_failed.restype = ctypes.c_uint64
        lib.tidal_env_last_error.argtypes = []
        lib.tidal_env_last_error.restype = c_char_p
        _lib = lib
        return lib


def _last_error(lib):
    msg = lib.tidal_env_last_error()
    return msg.decode("utf-8", "replace") if msg else ""


def _text(b):
    return b.decode("utf-8", "replace") if b else ""


def _bytes(s):
    if s is None:
        return None
    if isinstance(s, bytes):
        return s
    return str(s).encode("utf-8")


def _exception_text(e):
    text = str(e)
    name = type(e).__name__
    return "%s: %s" % (name, text) if text else name


# ---------------------------------------------------------------- a server

class Server:
    """One environment served on the bus until stop().

    fn(request) -> Step | number | None is called on the library's threads
    (up to `concurrency` at once; they share the GIL, so concurrency helps
    handlers that wait on I/O). `single_turn` gives the ``@reward`` semantics:
    RESET is answered with an empty response without calling fn, and every
    STEP is done.
    """

    def __init__(self, name, fn, single_turn=False, bus=None, concurrency=0, max_request_bytes=0,
                 user=None, password=None, token=None, creds_file=None,
                 tls_ca=None, tls_cert=None, tls_key=None, log=True):
        self.name = name
        self.fn = fn
        self.single_turn = single_turn
        self.bus = bus or os.environ.get("TIDAL_BUS") or DEFAULT_BUS
        self.log = log
        self._lib = library()
        # Everything the library may read while it serves stays referenced here.
        self._strings = [_bytes(x) for x in (self.bus, name, user, password, token, creds_file,
                                              tls_ca, tls_cert, tls_key)]
        s = self._strings
        self._opts = _COptions(url=s[0], name=s[1], concurrency=int(concurrency or 0),
                               max_request_bytes=int(max_request_bytes or 0),
                               user=s[2], password=s[3], token=s[4], creds_file=s[5],
                               tls_ca=s[6], tls_cert=s[7], tls_key=s[8])
        self._callback = _HANDLER(self._handle)  # kept alive for the server's lifetime
        self._handle_ptr = None

    # the ctypes callback: never lets an exception out
    def _handle(self, _user, crq, rsp):
        try:
            rq = crq.contents
            op = _OPS.get(rq.op)
            if op is None:
                raise ValueError("unknown op %d" % rq.op)
            n = int(rq.n_action_tokens)
            tokens = rq.action_tokens[:n] if n and rq.action_tokens else []
            request = Request(_text(rq.env), _text(rq.session), op, int(rq.turn),
                              _text(rq.task_json) or "{}", _text(rq.action_text), tokens)
            if self.single_turn:
                if op == RESET:
                    return 0
                out = self.fn(request)
                self._fill(rsp, out, True)
            else:
                self._fill(rsp, self.fn(request), False)
            return 0
        except BaseException as e:  # noqa: B902 - a handler must never take the process down
            msg = _exception_text(e)
            if self.log:
                sys.stderr.write("tidal_env %s: request failed: %s" % (self.name, traceback.format_exc()))
                sys.stderr.flush()
            try:
                self._lib.tidal_env_set_error(rsp, msg.encode("utf-8", "replace"))
            except BaseException:  # noqa: B902
                pass
            return 1

    def _check(self, rc, what):
        if rc != 0:
            raise ValueError("%s: %s" % (what, _last_error(self._lib) or "refused"))

    def _fill(self, rsp, out, force_done):
        lib = self._lib
        if out is None:
            if force_done:
                raise TypeError("the reward function returned None, want a number or tidal_env.Step")
            return
        if isinstance(out, Step):
            reward, done, obs, metrics = out.reward, out.done, out.observation, out.metrics
        elif isinstance(out, (int, float)):
            reward, done, obs, metrics = out, True, "", None
        else:
            raise TypeError("the handler returned %s, want a number, a tidal_env.Step or None"
                            % type(out).__name__)
        if force_done:
            done = True
        reward = float(reward)
        if not math.isfinite(reward):
            raise ValueError("reward is %r, want a finite number" % reward)
        self._check(lib.tidal_env_set_reward(rsp, reward), "reward")
        self._check(lib.tidal_env_set_done(rsp, 1 if done else 0), "done")
        if obs:
            self._check(lib.tidal_env_set_observation(rsp, _bytes(obs)), "observation")
        if metrics:
            for k, v in dict(metrics).items():
                v = float(v)
                if not math.isfinite(v):
                    raise ValueError("metric %r is %r, want a finite number" % (k, v))
                self._check(lib.tidal_env_add_metric(rsp, _bytes(k), v), "metric %r" % k)

    def start(self):
        """Connect and subscribe; returns once requests are being served."""
        if self._handle_ptr is not None:
            return self
        out = ctypes.c_void_p()
        if self._lib.tidal_env_start(ctypes.byref(self._opts), self._callback, None, ctypes.byref(out)) != 0:
            raise TidalEnvError("cannot serve tidal.env.%s on %s: %s"
                                % (self.name, self.bus, _last_error(self._lib)))
        self._handle_ptr = out
        return self

    def stop(self):
        """Stop taking requests, answer the ones received, disconnect."""
        if self._handle_ptr is None:
            return
        h, self._handle_ptr = self._handle_ptr, None
        self._lib.tidal_env_stop(h)

    @property
    def served(self):
        """Requests answered so far (0 once stopped)."""
        return int(self._lib.tidal_env_served(self._handle_ptr)) if self._handle_ptr else 0

    @property
    def failed(self):
        """Requests answered with an error so far (0 once stopped)."""
        return int(self._lib.tidal_env_failed(self._handle_ptr)) if self._handle_ptr else 0

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


# ---------------------------------------------------------------- decorators and serve()

_registry = {}  # name -> (fn, single_turn), in registration order


def _register(name, fn, single_turn):
    if not isinstance(name, str) or not name:
        raise ValueError("an environment needs a name")
    if name in _registry:
        raise ValueError("environment %r is registered twice" % name)
    _registry[name] = (fn, single_turn)


def reward(name):
    """Register `fn(prompt, completion, task) -> float | Step` as single-turn env `name`."""
    def deco(fn):
        def step(request):
            return fn(request.prompt, request.action, request.task)
        step.__wrapped__ = fn
        _register(name, step, True)
        return fn
    return deco


def env(name):
    """Register `fn(request) -> Step | float | None` as multi-turn env `name` (RESET and STEP)."""
    def deco(fn):
        _register(name, fn, False)
        return fn
    return deco


def registered():
    """The names of the registered environments."""
    return list(_registry)


def _parser(prog):
    p = argparse.ArgumentParser(
        prog=prog, description="Serve tidal environment(s) on the bus until SIGINT or SIGTERM.")
    p.add_argument("--bus", default=None,
                   help="NATS URL(s), comma separated (default: $TIDAL_BUS, else %s)" % DEFAULT_BUS)
    p.add_argument("--concurrency", type=int, default=None,
                   help="handler threads per environment (default: $TIDAL_ENV_CONCURRENCY, else 4)")
    p.add_argument("--name", default=None,
                   help="serve the (single) registered environment under this name instead")
    p.add_argument("--max-request-bytes", type=int, default=0, help="larger requests get an error (default 4 MiB)")
    p.add_argument("--user", default=None)
    p.add_argument("--password", default=None)
    p.add_argument("--token", default=None)
    p.add_argument("--creds", default=None, help="NATS .creds file")
    p.add_argument("--tls-ca", default=None)
    p.add_argument("--tls-cert", default=None)
    p.add_argument("--tls-key", default=None)
    p.add_argument("--stop-after", type=float, default=None, help="stop after this many seconds")
    return p


def serve(argv=None, **overrides):
    """Serve every registered environment until SIGINT or SIGTERM, then drain and return.

    Options come from the command line (argv, default sys.argv[1:]: --bus,
    --concurrency, --name, credentials, --stop-after), then from keyword
    overrides with the same names (bus="nats://...", concurrency=8). Call it
    from the main thread. A failure to connect exits the process with status 1.
    """
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "tidal_env"
    args = _parser(prog).parse_args(sys.argv[1:] if argv is None else argv)
    for k, v in overrides.items():
        if not hasattr(args, k):
            raise TypeError("serve() got an unknown option %r" % k)
        setattr(args, k, v)
    if not _registry:
        raise TidalEnvError("no environment registered: decorate a function with "
                            "@tidal_env.reward(NAME) or @tidal_env.env(NAME) before serve()")
    envs = list(_registry.items())
    if args.name:
        if len(envs) != 1:
            sys.stderr.write("%s: --name needs exactly one registered environment (have %s)\n"
                             % (prog, ", ".join(_registry)))
            sys.exit(2)
        envs = [(args.name, envs[0][1])]
    bus = args.bus or os.environ.get("TIDAL_BUS") or DEFAULT_BUS
    concurrency = args.concurrency
    if concurrency is None:
        concurrency = int(os.environ.get("TIDAL_ENV_CONCURRENCY", "0") or 0)
    if concurrency < 0:
        sys.stderr.write("%s: --concurrency must be >= 0\n" % prog)
        sys.exit(2)

    # SIGINT / SIGTERM: Python handlers note the signal and the wakeup fd wakes
    # the main thread, whichever thread the kernel picked. (No signal mask is
    # changed, so processes a handler starts get the usual one.)
    sigs = (signal.SIGINT, signal.SIGTERM)
    old_handlers = {sig: signal.getsignal(sig) for sig in sigs}
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    got = []
    old_wakeup = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    for sig in sigs:
        signal.signal(sig, lambda signum, frame: got.append(signum))
    servers = []
    try:
        try:
            for name, (fn, single_turn) in envs:
                servers.append(Server(name, fn, single_turn, bus=bus, concurrency=concurrency,
                                      max_request_bytes=args.max_request_bytes, user=args.user,
                                      password=args.password, token=args.token, creds_file=args.creds,
                                      tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                                      tls_key=args.tls_key).start())
        except TidalEnvError as e:
            sys.stderr.write("%s: %s\n" % (prog, e))
            sys.exit(1)
        sys.stderr.write("%s: serving %s on %s\n" % (
            prog, ", ".join("tidal.env." + s.name for s in servers), bus))
        sys.stderr.flush()
        deadline = None
        if args.stop_after is not None and args.stop_after > 0:
            deadline = time.monotonic() + args.stop_after
        while not got:
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                break
            ready, _, _ = select.select([rfd], [], [], timeout)
            if ready:
                try:
                    got.extend(b for b in os.read(rfd, 64) if b in sigs)
                except BlockingIOError:
                    pass
        why = signal.Signals(got[0]).name if got else "time"
        counts = ", ".join("%s %d served, %d failed" % (s.name, s.served, s.failed) for s in servers)
        sys.stderr.write("%s: %s: draining (%s)\n" % (prog, why, counts))
        sys.stderr.flush()
    finally:
        # A second signal while draining ends the process at once.
        for sig in sigs:
            signal.signal(sig, signal.SIG_DFL)
        try:
            for s in servers:
                s.stop()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            os.close(rfd)
            os.close(wfd)
            for sig, h in old_handlers.items():
                if h is not None:
                    signal.signal(sig, h)
