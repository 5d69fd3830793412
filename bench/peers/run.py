#!/usr/bin/env python3
"""gimmm side by side with Google's official Firebase Admin SDKs.

Installs the SDKs (pinned below) into a scratch directory, then, for every
emulator latency and round, starts a fresh `gimmm emulator --api http-v1`
and pushes the same N messages through

* Python firebase-admin `messaging.send_each` (and `send_each_async` when the
  installed version has it),
* Node firebase-admin `getMessaging().sendEach` (HTTP/2, the default, and
  optionally HTTP/1.1 after `enableLegacyHttpTransport()`),
* gimmm: `gimmm serve` (durable store, fsync on every batch) with the HTTP v1
  link to that same emulator, loaded by `gimmm bench --api http-v1 --gateway`
  over a BAL connection that gets every result back,

and prints one table with medians over the rounds. See README.md next to
this file for what is measured and how. Not part of CI: it downloads from
PyPI and npm and takes minutes.

Standard library only (the SDK drivers run in their own venv / node_modules).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

PY_SDK_VERSION = "7.7.0"
# firebase-admin 14 needs Node >= 22; 13.x supports Node >= 18 (what
# Debian/Ubuntu's apt packages give).
NODE_SDK_VERSION_NODE22 = "14.5.1"
NODE_SDK_VERSION_OLDER = "13.9.0"

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_checked(cmd, **kw):
    log("+", " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


# ---------------------------------------------------------------- set-up


def node_major():
    if not shutil.which("node"):
        return None
    out = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
    try:
        return int(out.strip().lstrip("v").split(".")[0])
    except ValueError:
        return None


def ensure_node():
    """Node and npm, installed with apt only if they are missing."""
    if node_major() is not None and shutil.which("npm"):
        return
    log("node/npm not found: installing the distribution's nodejs and npm with apt-get")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    run_checked(sudo + ["apt-get", "update"])
    run_checked(sudo + ["apt-get", "install", "-y", "nodejs", "npm"])
    if node_major() is None:
        sys.exit("node is still missing after apt-get install nodejs npm")


def setup(scratch):
    """Creates the venv and node_modules (once; reused when the pinned
    versions are already there). Returns (python, node_modules, versions)."""
    os.makedirs(scratch, exist_ok=True)
    venv = os.path.join(scratch, "venv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        run_checked([sys.executable, "-m", "venv", venv])
    have = subprocess.run([py, "-c", "import firebase_admin; print(firebase_admin.__version__)"],
                          capture_output=True, text=True).stdout.strip()
    if have != PY_SDK_VERSION:
        run_checked([py, "-m", "pip", "install", "-q", "--upgrade", "pip"])
        run_checked([py, "-m", "pip", "install", "-q", f"firebase-admin=={PY_SDK_VERSION}"])
    ensure_node()
    major = node_major()
    node_ver = NODE_SDK_VERSION_NODE22 if major >= 22 else NODE_SDK_VERSION_OLDER
    node_dir = os.path.join(scratch, f"node-firebase-admin-{node_ver}")
    os.makedirs(node_dir, exist_ok=True)
    pkg = os.path.join(node_dir, "node_modules", "firebase-admin", "package.json")
    if not os.path.exists(pkg):
        with open(os.path.join(node_dir, "package.json"), "w") as f:
            json.dump({"name": "gimmm-peers-scratch", "private": True}, f)
        run_checked(["npm", "install", "--no-audit", "--no-fund", "--save-exact",
                     f"firebase-admin@{node_ver}"], cwd=node_dir)
    return py, os.path.join(node_dir, "node_modules"), {"python": PY_SDK_VERSION, "node": node_ver,
                                                        "node_runtime": major}


# ---------------------------------------------------------------- processes


class Emulator:
    """A fresh `gimmm emulator --api http-v1` for one run."""

    def __init__(self, gimmm, workdir, latency_ms, max_streams):
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.port, self.stats_port = free_port(), free_port()
        self.sa = os.path.join(workdir, "emulator-sa.json")
        self.ca = os.path.join(workdir, "emulator-ca.pem")
        for p in (self.sa, self.ca):
            if os.path.exists(p):
                os.remove(p)
        self.log = open(os.path.join(workdir, "emulator.log"), "w")
        self.proc = subprocess.Popen(
            [gimmm, "emulator", "--api", "http-v1",
             "--listen", f"127.0.0.1:{self.port}",
             "--stats-listen", f"127.0.0.1:{self.stats_port}",
             "--latency-ms", str(latency_ms),
             "--max-concurrent-streams", str(max_streams),
             "--ca-out", self.ca, "--service-account-out", self.sa],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.endpoint = f"https://127.0.0.1:{self.port}"
        self.stats_url = f"http://127.0.0.1:{self.stats_port}"
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator exited; see {self.log.name}")
            try:
                self.stats()
                if os.path.exists(self.sa) and os.path.exists(self.ca):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("emulator did not come up within 30 s")

    def stats(self):
        with urllib.request.urlopen(self.stats_url + "/stats?summary=true", timeout=10) as r:
            return json.load(r)

    def stop(self):
        """Stops it; returns its CPU seconds (user+sys, its whole life)."""
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 15
        ru = None
        while ru is None:
            pid, status, r = os.wait4(self.proc.pid, os.WNOHANG)
            if pid == self.proc.pid:
                ru = r
            elif time.time() > deadline:
                self.proc.kill()
                _, status, ru = os.wait4(self.proc.pid, 0)
            else:
                time.sleep(0.05)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.log.close()
        return ru.ru_utime + ru.ru_stime


def emulator_summary(s):
    conns = s.get("connections", [])
    return {
        "requests": s.get("requests"),
        "ok": s.get("ok"),
        "by_status": s.get("by_status"),
        "connections_h2": sum(1 for c in conns if c.get("alpn") == "h2"),
        "connections_http1": sum(1 for c in conns if c.get("alpn") != "h2"),
        "streams_high_water": max([c.get("streams_high_water", 0) for c in conns] or [0]),
        "tokens_issued": s.get("tokens_issued"),
    }


def run_child(cmd, env, timeout):
    """Runs cmd, returning (rc, stdout, stderr, rusage) with the child's own
    rusage (os.wait4), so CPU and peak RSS are that process's alone."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        deadline = time.time() + timeout
        try:
            while True:
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid == proc.pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    break
                if time.time() > deadline:
                    proc.kill()
                    _, status, ru = os.wait4(proc.pid, 0)
                    proc.returncode = None
                    break
                time.sleep(0.05)
        finally:
            if proc.returncode is None and proc.poll() is None:
                proc.kill()
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), ru


def sdk_run(kind, py, node_modules, emu, n, concurrency, timeout):
    env = dict(os.environ)
    env["REQUESTS_CA_BUNDLE"] = emu.ca   # requests: token + send_each
    env["SSL_CERT_FILE"] = emu.ca        # httpx: send_each_async
    env["NODE_EXTRA_CA_CERTS"] = emu.ca  # node
    env["NODE_PATH"] = node_modules
    common = ["--endpoint", emu.endpoint, "--service-account", emu.sa,
              "--messages", str(n), "--concurrency", str(concurrency)]
    if kind in ("send_each", "send_each_async"):
        cmd = [py, "-W", "ignore::DeprecationWarning", os.path.join(HERE, "sdk_python.py"),
               "--mode", kind] + common
    else:
        cmd = ["node", os.path.join(HERE, "sdk_node.js"), "--transport",
               "http1" if kind == "sendEach-http1" else "http2"] + common
    rc, out, err, ru = run_child(cmd, env, timeout)
    line = next((l for l in reversed(out.splitlines()) if l.startswith("{")), None)
    if rc != 0 or line is None:
        return {"failed_run": f"exit {rc}: {err.strip()[-300:]}"}
    r = json.loads(line)
    if "skipped" in r:
        return r
    return {
        "what": r["sdk"] + " " + r["mode"],
        "messages": n,
        "ok": r["ok"],
        "errors": r["failed"] + (n - r["ok"] - r["failed"]),
        "error_kinds": r["errors"],
        "msgs_per_sec": r["ok"] / r["wall_secs"] if r["wall_secs"] > 0 else 0.0,
        "wall_secs": r["wall_secs"],
        # The sending phase only (import, set-up and first token excluded).
        "cpu_us_per_msg": r["cpu_secs"] * 1e6 / n,
        # The whole process, set-up included (from wait4).
        "process_cpu_secs": ru.ru_utime + ru.ru_stime,
        "peak_rss_bytes": ru.ru_maxrss * 1024,
    }


def gimmm_run(gimmm, emu, workdir, n, links, max_streams, timeout):
    """`gimmm serve` (durable store on disk) against the emulator, loaded by
    `gimmm bench --api http-v1 --gateway` (one BAL session that gets every
    DOWNSTREAM_ACK back)."""
    token = "peers-bench-" + os.urandom(8).hex()
    store = os.path.join(workdir, f"gimmm-{os.getpid()}-{time.time_ns()}.db")
    cfg = os.path.join(workdir, "gimmm.toml")
    ports = os.path.join(workdir, "gimmm-ports.json")
    for p in (ports,):
        if os.path.exists(p):
            os.remove(p)
    with open(cfg, "w") as f:
        f.write(f"""[fcm]
api = "http_v1"
endpoint = "{emu.endpoint}"
service_account_file = "{emu.sa}"
ca_file = "{emu.ca}"
connections = {links}
max_pending_per_connection = {max_streams}
# No client-side quota (the SDKs have none).
max_messages_per_minute = 0

[bal]
listen = "127.0.0.1:0"

[[bal.sessions]]
session_id = "peers.s0"
token = "{token}"

[store]
path = "{store}"

[admin]
listen = "127.0.0.1:0"
""")
    os.chmod(cfg, 0o600)
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "warn")
    glog = open(os.path.join(workdir, "gateway.log"), "w")
    gw = subprocess.Popen([gimmm, "serve", "--config", cfg, "--ports-file", ports],
                          stdout=glog, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 30
        bal = None
        while time.time() < deadline and bal is None:
            if gw.poll() is not None:
                raise RuntimeError(f"gateway exited; see {glog.name}")
            try:
                with open(ports) as f:
                    bal = json.load(f)["bal"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.1)
        if bal is None:
            raise RuntimeError("gateway did not write its ports file within 30 s")
        # The gateway opens its HTTP/2 connections at start; wait for them
        # so the run measures sending, not connecting (the SDKs' first token
        # is also fetched before their clock starts).
        deadline = time.time() + 30
        while time.time() < deadline:
            if emulator_summary(emu.stats())["connections_h2"] >= links:
                break
            time.sleep(0.1)
        out_json = os.path.join(workdir, "bench.json")
        if os.path.exists(out_json):
            os.remove(out_json)
        cmd = [gimmm, "bench", "--api", "http-v1", "--gateway", bal,
               "--gateway-pid", str(gw.pid), "--emulator-stats", emu.stats_url,
               "--session-ids", "peers.s0", "--token", token,
               "--messages", str(n), "--links", str(links), "--json", out_json,
               "--timeout-secs", "60"]
        rc, out, err, ru = run_child(cmd, env, timeout)
        if rc != 0 or not os.path.exists(out_json):
            return {"failed_run": f"bench exit {rc}: {(err or out).strip()[-400:]}"}
        with open(out_json) as f:
            b = json.load(f)
    finally:
        gw.send_signal(signal.SIGTERM)
        try:
            _, status, gru = os.wait4(gw.pid, 0)
        except ChildProcessError:
            gru = None
        glog.close()
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(store + suffix)
            except OSError:
                pass
    lost = b.get("lost", 0) or 0
    dup = b.get("duplicated", 0) or 0
    gw_cpu = b.get("gateway_cpu_us_per_msg")
    bench_cpu_secs = b.get("bench_process_cpu_secs")
    return {
        "what": f"gimmm {links} HTTP/2 connections x {max_streams} streams, durable, results to a BAL",
        "messages": n,
        "ok": n - lost,
        # Messages whose final result at the BAL was not a success, or
        # that got none or two.
        "errors": lost + dup + int(b.get("rejected", 0) or 0) + int(b.get("protocol_errors", 0) or 0),
        "msgs_per_sec": b.get("throughput_msgs_per_sec"),
        "wall_secs": b.get("elapsed_secs"),
        "cpu_us_per_msg": gw_cpu,
        "bench_cpu_us_per_msg": bench_cpu_secs * 1e6 / n if bench_cpu_secs is not None else None,
        "peak_rss_bytes": b.get("gateway_peak_rss_bytes"),
        "bench_peak_rss_bytes": ru.ru_maxrss * 1024,
        "gateway_process_cpu_secs": (gru.ru_utime + gru.ru_stime) if gru else None,
        "bench_json": b,
    }


# ---------------------------------------------------------------- report


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def report(runs, versions, latencies, rounds, json_out, args):
    """Prints the table: medians per (latency, contender, N) over the
    rounds, and the per-round ratio to the fastest SDK of the same round
    (the machine's other load drifts; runs of one round are minutes apart,
    not tens of minutes)."""
    ok_runs = [r for r in runs if "msgs_per_sec" in r]

    def best_sdk(lat, rnd):
        xs = [r["msgs_per_sec"] for r in ok_runs
              if r["latency_ms"] == lat and r["round"] == rnd and r["contender"] != "gimmm"]
        return max(xs) if xs else None

    def best_sdk_cpu(lat, rnd):
        # The CPU per message of the SDK that was fastest in that round.
        xs = [r for r in ok_runs
              if r["latency_ms"] == lat and r["round"] == rnd and r["contender"] != "gimmm"]
        return max(xs, key=lambda r: r["msgs_per_sec"])["cpu_us_per_msg"] if xs else None

    rows = []
    for lat in latencies:
        keys = []
        for r in ok_runs:
            k = (r["contender"], r["n"])
            if r["latency_ms"] == lat and k not in keys:
                keys.append(k)
        for c, n in keys:
            rs = [r for r in ok_runs if r["latency_ms"] == lat and r["contender"] == c and r["n"] == n]
            ratios = []
            cpu_ratios = []
            for r in rs:
                b = best_sdk(lat, r["round"])
                if b:
                    ratios.append(r["msgs_per_sec"] / b)
                bc = best_sdk_cpu(lat, r["round"])
                if bc and r.get("cpu_us_per_msg"):
                    cpu_ratios.append(bc / r["cpu_us_per_msg"])
            rows.append({
                "latency_ms": lat, "contender": c, "n": n, "what": rs[0]["what"], "rounds": len(rs),
                "msgs_per_sec": median([r["msgs_per_sec"] for r in rs]),
                "x_fastest_sdk": median(ratios),
                "cpu_us_per_msg": median([r["cpu_us_per_msg"] for r in rs]),
                "cpu_x_less_than_fastest_sdk": median(cpu_ratios),
                "bench_cpu_us_per_msg": median([r.get("bench_cpu_us_per_msg") for r in rs]),
                "peak_rss_mib": median([r["peak_rss_bytes"] / 2**20 if r.get("peak_rss_bytes") else None
                                        for r in rs]),
                "errors": sum(r["errors"] for r in rs),
                "emulator_cpu_us_per_msg": median([r.get("emulator_cpu_us_per_msg") for r in rs]),
                "connections": median([r["emulator"]["connections_h2"] + r["emulator"]["connections_http1"]
                                       for r in rs]),
                "streams_high_water": median([r["emulator"]["streams_high_water"] for r in rs]),
            })
    print()
    print(f"SDKs: Python firebase-admin {versions['python']}, Node firebase-admin {versions['node']} "
          f"(Node {versions['node_runtime']}); medians of {rounds} rounds. CPU = user+sys of the SDK "
          f"process while sending, or of the gimmm gateway process (the bench's BAL client apart).")
    print("x fastest SDK: median over rounds of msgs/s divided by that round's fastest SDK; "
          "CPU x less: that SDK's CPU/msg divided by this one's.")
    hdr = ("latency", "contender", "N", "msgs/s", "x fastest SDK", "CPU µs/msg", "CPU x less",
           "BAL client µs/msg", "peak RSS MiB", "errors", "conns", "streams hw",
           "emulator µs/msg")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        print("| " + " | ".join([
            f"{r['latency_ms']} ms", r["contender"], f"{r['n']:,}", fmt(r["msgs_per_sec"], ",.0f"),
            fmt(r["x_fastest_sdk"], ".2f"), fmt(r["cpu_us_per_msg"], ",.1f"),
            fmt(r["cpu_x_less_than_fastest_sdk"], ".1f"),
            fmt(r["bench_cpu_us_per_msg"], ",.1f"), fmt(r["peak_rss_mib"], ".0f"),
            str(r["errors"]), fmt(r["connections"], ".0f"), fmt(r["streams_high_water"], ".0f"),
            fmt(r["emulator_cpu_us_per_msg"], ",.1f")]) + " |")
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"versions": versions, "args": args, "runs": runs, "medians": rows}, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gimmm", nargs="?", default=os.path.join(REPO, "target", "release", "gimmm"),
                    help="the gimmm binary (default: target/release/gimmm)")
    ap.add_argument("--messages", type=int, default=20_000, help="N for every contender")
    ap.add_argument("--gimmm-messages", type=int, default=200_000,
                    help="an extra, longer gimmm run (0 = none): 20,000 take gimmm well under a second")
    ap.add_argument("--latencies", default="0,20", help="emulator latencies in ms")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--links", type=int, default=4, help="gimmm's HTTP/2 connections")
    ap.add_argument("--max-streams", type=int, default=100,
                    help="the emulator's SETTINGS_MAX_CONCURRENT_STREAMS (Google's is 100) and gimmm's streams per connection")
    ap.add_argument("--sdk-concurrency", type=int, default=1,
                    help="batches of 500 in flight at once per SDK process (1 = the documented loop)")
    ap.add_argument("--contenders",
                    default="send_each,send_each_async,sendEach,gimmm",
                    help="comma list of send_each, send_each_async, sendEach, sendEach-http1, gimmm")
    ap.add_argument("--scratch", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "gimmm-peers"),
                    help="venv, node_modules and run files (never in the repository)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per run")
    ap.add_argument("--json", help="write every run and the medians here")
    ap.add_argument("--report", metavar="JSON", help="print the table of an earlier --json file and exit")
    a = ap.parse_args()
    if a.report:
        with open(a.report) as f:
            d = json.load(f)
        lats = sorted({r["latency_ms"] for r in d["runs"]})
        report(d["runs"], d["versions"], lats, d["args"]["rounds"], None, d["args"])
        return

    # SIGTERM unwinds like Ctrl-C, so the emulator and gateway of the
    # current run are stopped by their finally blocks.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    gimmm = os.path.abspath(a.gimmm)
    if not os.access(gimmm, os.X_OK):
        sys.exit(f"{gimmm} is not an executable (build it: cargo build --release -p gimmm)")
    py, node_modules, versions = setup(a.scratch)
    contenders = a.contenders.split(",")
    latencies = [int(x) for x in a.latencies.split(",")]
    runs = []
    for lat in latencies:
        for rnd in range(a.rounds):
            # Rotate the order each round so that drift in the machine's
            # other load does not always hit the same contender.
            order = contenders[rnd % len(contenders):] + contenders[:rnd % len(contenders)]
            for c in order:
                sizes = [a.messages]
                if c == "gimmm" and a.gimmm_messages:
                    sizes.append(a.gimmm_messages)
                for n in sizes:
                    work = os.path.join(a.scratch, "run")
                    emu = Emulator(gimmm, work, lat, a.max_streams)
                    t0 = time.time()
                    try:
                        if c == "gimmm":
                            r = gimmm_run(gimmm, emu, work, n, a.links, a.max_streams, a.timeout)
                        else:
                            r = sdk_run(c, py, node_modules, emu, n, a.sdk_concurrency, a.timeout)
                        r["emulator"] = emulator_summary(emu.stats())
                    finally:
                        emu_cpu = emu.stop()
                    # The emulator shares the two cores with the contender.
                    r["emulator_cpu_us_per_msg"] = emu_cpu * 1e6 / n
                    r.update({"contender": c, "latency_ms": lat, "round": rnd + 1, "n": n})
                    runs.append(r)
                    log(f"latency {lat} ms round {rnd + 1} {c} N={n}: "
                        + (r.get("failed_run") or r.get("skipped") or
                           f"{fmt(r.get('msgs_per_sec'), ',.0f')} msg/s, "
                           f"{fmt(r.get('cpu_us_per_msg'), ',.1f')} µs CPU/msg, errors {r.get('errors')}, "
                           f"{time.time() - t0:.1f} s"))

    report(runs, versions, latencies, a.rounds, a.json, vars(a))


if __name__ == "__main__":
    main()
