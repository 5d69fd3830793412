// Drive the official Node.js Firebase Admin SDK (firebase-admin) against
// `gimmm emulator --api http-v1`. Part of bench/peers (see README.md); run by
// run.py with NODE_PATH pointing at its scratch node_modules.
//
// The SDK is used as documented: initializeApp({credential: cert(<service
// account file>, httpAgent), httpAgent}), then batches of at most 500
// messages (the SDK's limit) through getMessaging().sendEach(). By default
// sendEach opens one HTTP/2 session per call (Http2SessionHandler) and sends
// every message of the batch on it; after enableLegacyHttpTransport() it
// uses https.request with the app's httpAgent instead (HTTP/1.1, one request
// per socket at a time). The SDK has no setting for its endpoints, so this
// process, and only it, redirects them:
//
// * fcm.googleapis.com over HTTP/2: http2.connect is wrapped (the SDK calls
//   it through the module object) to connect to the emulator instead;
// * fcm.googleapis.com over HTTP/1.1, and the token request: the SDK's
//   httpAgent option (a documented hook, also handed to cert()) gets an
//   https.Agent whose createConnection dials the emulator. The token request
//   has to be redirected because google-auth-library (10.x under
//   firebase-admin 13, 11.x under 14) ignores the key file's token_uri: it
//   always POSTs to https://oauth2.googleapis.com/token, with that URL as the
//   JWT audience, which the emulator accepts as Google does.
//
// Trust: the emulator's CA through NODE_EXTRA_CA_CERTS (set by run.py).
// Prints one JSON line: wall and CPU time of the sending phase only.
'use strict';
const http2 = require('http2');
const https = require('https');
const tls = require('tls');

function arg(name, dflt) {
  const i = process.argv.indexOf('--' + name);
  if (i < 0) {
    if (dflt === undefined) throw new Error('missing --' + name);
    return dflt;
  }
  return process.argv[i + 1];
}
const endpoint = new URL(arg('endpoint'));
const emuHost = endpoint.hostname;
const emuPort = Number(endpoint.port || 443);
const saPath = arg('service-account');
const total = Number(arg('messages'));
const batch = Number(arg('batch', '500'));
const concurrency = Number(arg('concurrency', '1'));
const legacy = arg('transport', 'http2') === 'http1';

const GOOGLE_HOSTS = new Set(['fcm.googleapis.com', 'oauth2.googleapis.com']);

const realConnect = http2.connect;
http2.connect = function (authority, options, listener) {
  const u = new URL(String(authority));
  if (GOOGLE_HOSTS.has(u.hostname)) {
    authority = `https://${emuHost}:${emuPort}`;
  }
  const session = realConnect.call(this, authority, options, listener);
  // firebase-admin sends ':scheme: https:' (URL.protocol, colon included;
  // its own source marks it TODO(b/401051826)). Google's front end takes
  // it; the h2 crate under the emulator refuses the stream as malformed
  // (RST_STREAM PROTOCOL_ERROR), so the colon is dropped here.
  const request = session.request;
  session.request = function (headers, opts) {
    if (headers && typeof headers[':scheme'] === 'string' && headers[':scheme'].endsWith(':')) {
      headers = Object.assign({}, headers, { ':scheme': headers[':scheme'].slice(0, -1) });
    }
    return request.call(this, headers, opts);
  };
  return session;
};

class EmulatorAgent extends https.Agent {
  createConnection(options, cb) {
    if (GOOGLE_HOSTS.has(options.host) || GOOGLE_HOSTS.has(options.hostname)) {
      // Dial the emulator and check its certificate for the emulator's
      // address (no SNI for an IP address).
      options = Object.assign({}, options, {
        host: emuHost, hostname: emuHost, port: emuPort, servername: '',
        checkServerIdentity: (_h, cert) => tls.checkServerIdentity(emuHost, cert),
      });
    }
    return super.createConnection(options, cb);
  }
}
// keepAlive as Node's global agent (Node >= 19); maxSockets unlimited as it.
const agent = new EmulatorAgent({ keepAlive: true });

const { initializeApp, cert } = require('firebase-admin/app');
const { getMessaging } = require('firebase-admin/messaging');
const sdkVersion = JSON.parse(require('fs').readFileSync(
  require('path').join(require.resolve('firebase-admin/app'), '..', '..', '..', 'package.json'), 'utf8')).version;

async function main() {
  const app = initializeApp({ credential: cert(saPath, agent), httpAgent: agent });
  const messaging = getMessaging(app);
  if (legacy) messaging.enableLegacyHttpTransport();
  // The first access token before the clock starts (a long-running backend
  // has one already).
  await app.options.credential.getAccessToken();

  const starts = [];
  for (let s = 0; s < total; s += batch) starts.push(s);
  const mk = (s) => {
    const n = Math.min(batch, total - s);
    const out = new Array(n);
    for (let i = 0; i < n; i++) {
      const k = s + i;
      out[i] = {
        token: `peer-device-${String(k % 1000).padStart(4, '0')}-` + 'x'.repeat(140),
        data: { seq: String(k), k: 'v' },
      };
    }
    return out;
  };
  let ok = 0, failed = 0;
  const errors = {};
  const tally = (r) => {
    ok += r.successCount;
    failed += r.failureCount;
    for (const x of r.responses) {
      if (!x.success) {
        const k = (x.error && (x.error.code + ': ' + String(x.error.message).slice(0, 80))) || 'unknown';
        errors[k] = (errors[k] || 0) + 1;
      }
    }
  };
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  let next = 0;
  async function worker() {
    while (next < starts.length) {
      const s = starts[next++];
      tally(await messaging.sendEach(mk(s)));
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker));
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  console.log(JSON.stringify({
    sdk: `firebase-admin ${sdkVersion} (Node ${process.version})`,
    mode: legacy ? 'sendEach (HTTP/1.1, enableLegacyHttpTransport)' : 'sendEach (HTTP/2)',
    messages: total, ok, failed, errors, wall_secs: wall,
    cpu_secs: (cpu.user + cpu.system) / 1e6,
  }));
  agent.destroy();
}
main().catch((e) => { console.error(e); process.exit(1); });
