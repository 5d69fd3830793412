"""Drive the official Python Firebase Admin SDK (firebase-admin) against
`gimmm emulator --api http-v1`. Part of bench/peers (see README.md); run by
run.py inside its own venv, not meant to be imported.

The SDK is used as documented: `credentials.Certificate(<service-account
file>)` (its token_uri is the emulator's /token, and google-auth honours it),
`initialize_app`, then batches of at most 500 messages (the SDK's limit)
through `messaging.send_each` or `messaging.send_each_async`. Two things are
patched, in this process only, because the SDK has no setting for them:

* the FCM URL: `_MessagingService.FCM_URL` (a class attribute the service
  formats once when it is created) points at the emulator, and the
  connection-pool adapter the SDK mounts for `https://fcm.googleapis.com`
  (pool_maxsize=100) is mounted for the emulator's URL too, so that
  `send_each` gets the pool it would get against Google;
* trust: the emulator's CA comes in through REQUESTS_CA_BUNDLE (requests:
  the token request and send_each) and SSL_CERT_FILE (httpx, send_each_async),
  both set by run.py.

Prints one JSON line: wall time and CPU time of the sending phase only
(SDK import, app set-up and the first access token are outside it),
successes and failures.
"""
import argparse
import asyncio
import json
import sys
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["send_each", "send_each_async"], required=True)
    p.add_argument("--endpoint", required=True, help="https://127.0.0.1:PORT")
    p.add_argument("--service-account", required=True)
    p.add_argument("--messages", type=int, required=True)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=1,
                   help="batches in flight at once (threads for send_each, tasks for send_each_async)")
    a = p.parse_args()

    import firebase_admin
    from firebase_admin import credentials, messaging

    fcm_prefix = "https://fcm.googleapis.com"
    messaging._MessagingService.FCM_URL = (
        a.endpoint + "/v1/projects/{0}/messages:send")
    app = firebase_admin.initialize_app(credentials.Certificate(a.service_account))
    svc = messaging._get_messaging_service(app)
    session = svc._client.session
    session.mount(a.endpoint, session.get_adapter(fcm_prefix + "/"))

    if a.mode == "send_each_async" and not hasattr(messaging, "send_each_async"):
        print(json.dumps({"skipped": f"firebase-admin {firebase_admin.__version__} has no send_each_async"}))
        return

    def batch_messages(start, n):
        return [
            messaging.Message(
                token=f"peer-device-{(start + i) % 1000:04d}-" + "x" * 140,
                data={"seq": str(start + i), "k": "v"},
            )
            for i in range(n)
        ]

    # The first access token (one JWT signature and a POST to token_uri) is
    # fetched before the clock starts, like a long-running backend would.
    svc._credential.refresh(__import__("google.auth.transport.requests",
                                       fromlist=["Request"]).Request())

    starts = list(range(0, a.messages, a.batch))
    ok = fail = 0
    errors = {}

    def tally(resp):
        nonlocal ok, fail
        ok += resp.success_count
        fail += resp.failure_count
        for r in resp.responses:
            if not r.success:
                k = type(r.exception).__name__ + ": " + str(r.exception)[:80]
                errors[k] = errors.get(k, 0) + 1

    cpu0, t0 = time.process_time(), time.perf_counter()
    if a.mode == "send_each":
        if a.concurrency == 1:
            for s in starts:
                tally(messaging.send_each(batch_messages(s, min(a.batch, a.messages - s)), app=app))
        else:
            import concurrent.futures
            with concurrent.futures.ThreadPoolExecutor(a.concurrency) as ex:
                for resp in ex.map(lambda s: messaging.send_each(
                        batch_messages(s, min(a.batch, a.messages - s)), app=app), starts):
                    tally(resp)
    else:
        async def run():
            sem = asyncio.Semaphore(a.concurrency)

            async def one(s):
                async with sem:
                    return await messaging.send_each_async(
                        batch_messages(s, min(a.batch, a.messages - s)), app=app)
            for resp in await asyncio.gather(*[one(s) for s in starts]):
                tally(resp)
        asyncio.run(run())
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    print(json.dumps({
        "sdk": f"firebase-admin {firebase_admin.__version__} (Python {sys.version.split()[0]})",
        "mode": a.mode, "messages": a.messages, "ok": ok, "failed": fail,
        "errors": errors, "wall_secs": wall, "cpu_secs": cpu,
    }))


if __name__ == "__main__":
    main()
