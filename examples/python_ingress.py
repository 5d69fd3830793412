#!/usr/bin/env python3
"""Upstream without XMPP: an app posts a message to gimmm's ingress (SPEC §10).
Standard library only. Usage:
  python3 python_ingress.py URL CATEGORY KEY DEVICE [--ca-file CA.pem] [--message-id ID] [k=v ...]
"""
import json, ssl, sys, time, urllib.error, urllib.request, uuid

def post_upstream(url, category, key, device, data, message_id=None, ca_file=None):
    body = json.dumps({"category": category, "message_id": message_id or str(uuid.uuid4()),
                       "from": device, "data": data}).encode()
    ctx = ssl.create_default_context(cafile=ca_file) if url.startswith("https:") else None
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + key}
    for attempt in range(6):  # retries reuse the message_id: gimmm stores it once
        try:
            req = urllib.request.Request(url.rstrip("/") + "/v1/upstream", body, headers)
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                return r.status, json.load(r)  # 202 stored, 200 already stored
        except urllib.error.HTTPError as e:
            if e.code not in (429, 503):
                return e.code, json.load(e)  # 400/401/404/413: fix the request
            time.sleep(int(e.headers.get("Retry-After", "1")))
        except OSError:
            time.sleep(min(2 ** attempt, 30))  # network trouble: try again
    raise SystemExit("gimmm did not take the message")

if __name__ == "__main__":
    args, opts = sys.argv[1:], {}
    for flag in ("--ca-file", "--message-id"):
        if flag in args:
            i = args.index(flag); opts[flag] = args[i + 1]; del args[i:i + 2]
    url, category, key, device, *pairs = args
    status, answer = post_upstream(url, category, key, device, dict(p.split("=", 1) for p in pairs),
                                   opts.get("--message-id"), opts.get("--ca-file"))
    print(status, json.dumps(answer))
    sys.exit(0 if status in (200, 202) else 1)
