#!/usr/bin/env python3
"""A complete gimmm BAL in Python, standard library only.

Logs on, sends one DOWNSTREAM, prints every line gimmm sends and ACKs every
sequenced message, PINGs periodically, and reconnects with backoff when the
connection drops (the message is resent with the same message_id until gimmm
answers DOWNSTREAM_ACCEPTED; a resend of an accepted id is harmless).
With --tls it connects over TLS (gimmm's bal.tls_cert_file is set), checking
gimmm's certificate and host name against the system CAs or --ca-file.

  python3 examples/python_bal.py 127.0.0.1:5001 com.example.app dev-token DEVICE_TOKEN --once
  python3 examples/python_bal.py gw.example.com:5001 ... --tls --ca-file ca.pem
"""
import argparse, json, random, socket, ssl, sys, time, uuid

ap = argparse.ArgumentParser(description="Example gimmm BAL client")
ap.add_argument("server", help="gimmm BAL address, host:port")
ap.add_argument("session", help="session id (= FCM category)")
ap.add_argument("token", help="session token")
ap.add_argument("device", help="registration token to send to")
ap.add_argument("--once", action="store_true", help="exit after our message's final result")
ap.add_argument("--ping", type=float, default=20.0, help="seconds between PINGs")
ap.add_argument("--tls", action="store_true", help="connect over TLS")
ap.add_argument("--ca-file", help="with --tls: a CA certificate (PEM) to trust as well")
a = ap.parse_args()
host, port = a.server.rsplit(":", 1)
host = host.strip("[]")
# TLS: the system CAs (plus --ca-file); checks the chain and that the
# certificate names `host`, which is also sent as SNI.
tls = ssl.create_default_context() if a.tls else None
if tls and a.ca_file:
    tls.load_verify_locations(a.ca_file)
msg_id = "py-" + uuid.uuid4().hex
accepted = done = False
backoff = 0.2

def run(s):
    """One connection; returns the exit code when done, raises when it drops."""
    global accepted, done, backoff
    send = lambda m: s.sendall((json.dumps(m, separators=(",", ":")) + "\n").encode())
    send({"message_type": "LOGON", "session_id": a.session, "token": a.token})
    buf, last_ping = b"", time.monotonic()
    while True:
        if time.monotonic() - last_ping >= a.ping:
            send({"message_type": "PING"})
            last_ping = time.monotonic()
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            raise ConnectionError("closed by gimmm")
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            print(line.decode(), flush=True)
            m = json.loads(line)
            t = m.get("message_type")
            if t == "LOGON_RESPONSE":
                if m.get("status") != "SUCCESS":
                    return 3  # wrong credentials: retrying will not help
                backoff = 0.2
                if not accepted and not done:
                    send({"message_type": "DOWNSTREAM", "fcm_data": {"to": a.device,
                          "message_id": msg_id, "data": {"hello": "from python"}}})
            elif t == "ERROR" and m.get("error") == "SESSION_TAKEN_OVER":
                return 4  # another BAL took the session: do not fight over it
            elif t == "DOWNSTREAM_ACCEPTED" and m.get("message_id") == msg_id:
                accepted = True
            if "sequence_id" in m:
                send({"message_type": "ACK", "sequence_id": m["sequence_id"]})
            if t in ("DOWNSTREAM_ACK", "DOWNSTREAM_REJECT") and m.get("message_id") == msg_id:
                done = True
                if a.once:
                    return 0 if t == "DOWNSTREAM_ACK" else 2

def connect():
    s = socket.create_connection((host, int(port)), timeout=10)
    return tls.wrap_socket(s, server_hostname=host) if tls else s

while True:
    try:
        with connect() as s:
            s.settimeout(min(1.0, a.ping))
            sys.exit(run(s))
    except ssl.SSLCertVerificationError as e:
        sys.exit(f"TLS: {e}")  # gimmm's certificate is not trusted: retrying will not help
    except (OSError, ConnectionError, ValueError) as e:
        delay = backoff * random.uniform(0.5, 1.5)
        print(f"connection lost ({e}); reconnecting in {delay:.1f}s", file=sys.stderr, flush=True)
        time.sleep(delay)
        backoff = min(backoff * 2, 30.0)
