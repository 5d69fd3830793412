//! Test clients for the FCM HTTP v1 emulator: real TLS over loopback
//! (tokio-rustls trusting the emulator's CA), hyper's HTTP/2 and HTTP/1.1
//! client connections, and JWTs signed here with `jsonwebtoken` using the
//! generated service-account key.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use emulator::v1::{V1Config, V1Emulator, V1Faults, FIREBASE_MESSAGING_SCOPE};
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Every wait in the tests is bounded by this.
pub const T: Duration = Duration::from_secs(10);

/// A well-formed registration token.
pub const TOKEN: &str = "dGVzdC1kZXZpY2U:APA91bGtest_token-1.x";

pub async fn start(faults: V1Faults) -> V1Emulator {
    start_with(V1Config {
        faults,
        ..V1Config::default()
    })
    .await
}

pub async fn start_with(cfg: V1Config) -> V1Emulator {
    V1Emulator::start(cfg).await.unwrap()
}

pub fn client_config(emu: &V1Emulator, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(emu.ca_pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = (*xmpp::connect::client_config(roots).unwrap()).clone();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// TLS to the emulator, verifying its certificate for `localhost`.
pub async fn tls(emu: &V1Emulator, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(emu.addr()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let connector = TlsConnector::from(client_config(emu, alpn));
    tokio::time::timeout(
        T,
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .unwrap()
    .unwrap()
}

/// An answer, body read in full.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The FcmError `errorCode`, if any.
    pub fn error_code(&self) -> Option<String> {
        let v = self.json();
        v["error"]["details"]
            .as_array()?
            .iter()
            .find(|d| d["@type"] == emulator::v1::FCM_ERROR_TYPE)
            .and_then(|d| d["errorCode"].as_str().map(str::to_owned))
    }

    pub fn detail(&self, ty: &str) -> Option<Value> {
        let v = self.json();
        v["error"]["details"]
            .as_array()?
            .iter()
            .find(|d| d["@type"] == ty)
            .cloned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

fn request(path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Request<Full<Bytes>> {
    let mut b = Request::post(format!("https://localhost{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body))).unwrap()
}

async fn collect(r: hyper::Response<hyper::body::Incoming>) -> Result<Resp, hyper::Error> {
    let (parts, body) = r.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// An HTTP/2 client connection (hyper), with its driver task.
pub struct H2 {
    pub send: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    pub driver: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

pub async fn h2(emu: &V1Emulator) -> H2 {
    let io = tls(emu, &[b"h2"]).await;
    assert_eq!(io.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    H2 {
        send,
        driver: tokio::spawn(conn),
    }
}

impl H2 {
    pub async fn try_post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Resp, hyper::Error> {
        let r = tokio::time::timeout(T, self.send.send_request(request(path, headers, body)))
            .await
            .expect("request timed out")?;
        collect(r).await
    }

    pub async fn post(&mut self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
        self.try_post(path, headers, body).await.unwrap()
    }
}

/// An HTTP/1.1 client connection (hyper), with its driver task.
pub struct H1 {
    pub send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    pub driver: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

pub async fn h1(emu: &V1Emulator) -> H1 {
    let io = tls(emu, &[b"http/1.1"]).await;
    assert_eq!(io.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    H1 {
        send,
        driver: tokio::spawn(conn),
    }
}

impl H1 {
    pub async fn try_post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Resp, hyper::Error> {
        let mut all = vec![("host", "localhost")];
        all.extend_from_slice(headers);
        let r = tokio::time::timeout(T, self.send.send_request(request(path, &all, body)))
            .await
            .expect("request timed out")?;
        collect(r).await
    }

    pub async fn post(&mut self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
        self.try_post(path, headers, body).await.unwrap()
    }
}

pub fn service_account(emu: &V1Emulator) -> Value {
    serde_json::from_str(emu.service_account_json()).unwrap()
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The claims Google's client libraries sign.
pub fn claims(emu: &V1Emulator) -> Value {
    let n = now();
    json!({
        "iss": emu.client_email(),
        "scope": FIREBASE_MESSAGING_SCOPE,
        "aud": emu.token_uri(),
        "iat": n,
        "exp": n + 3600,
    })
}

/// RS256 JWT signed with the private key of `key_file` (a service-account
/// JSON), `kid` = its private_key_id.
pub fn sign_with(key_file: &Value, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = key_file["private_key_id"].as_str().map(str::to_owned);
    let key =
        EncodingKey::from_rsa_pem(key_file["private_key"].as_str().unwrap().as_bytes()).unwrap();
    jsonwebtoken::encode(&h, claims, &key).unwrap()
}

pub fn sign(emu: &V1Emulator, claims: &Value) -> String {
    sign_with(&service_account(emu), claims)
}

/// `application/x-www-form-urlencoded` JWT-bearer grant.
pub fn grant_body(assertion: &str) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", emulator::v1::JWT_BEARER_GRANT)
        .append_pair("assertion", assertion)
        .finish()
        .into_bytes()
}

pub const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
pub const JSON_CT: (&str, &str) = ("content-type", "application/json");

/// Fetch an access token over HTTP/1.1 (as google-auth does).
pub async fn access_token(emu: &V1Emulator) -> String {
    let mut c = h1(emu).await;
    let r = c
        .post("/token", &[FORM], grant_body(&sign(emu, &claims(emu))))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["access_token"].as_str().unwrap().to_owned()
}

pub fn send_path(emu: &V1Emulator) -> String {
    format!("/v1/projects/{}/messages:send", emu.project_id())
}

/// A connection plus a valid access token, for sends.
pub struct Sender {
    pub c: H2,
    pub token: String,
    pub path: String,
}

pub async fn sender(emu: &V1Emulator) -> Sender {
    let token = access_token(emu).await;
    Sender {
        c: h2(emu).await,
        token,
        path: send_path(emu),
    }
}

impl Sender {
    pub async fn try_send(&mut self, body: &Value) -> Result<Resp, hyper::Error> {
        let auth = format!("Bearer {}", self.token);
        let path = self.path.clone();
        self.c
            .try_post(
                &path,
                &[("authorization", auth.as_str()), JSON_CT],
                serde_json::to_vec(body).unwrap(),
            )
            .await
    }

    pub async fn send(&mut self, body: &Value) -> Resp {
        self.try_send(body).await.unwrap()
    }

    pub async fn send_raw(&mut self, body: &[u8]) -> Resp {
        let auth = format!("Bearer {}", self.token);
        let path = self.path.clone();
        self.c
            .post(
                &path,
                &[("authorization", auth.as_str()), JSON_CT],
                body.to_vec(),
            )
            .await
    }
}

/// `{"message":{"token":token,"data":{"k":v}}}`.
pub fn msg_to(token: &str, v: &str) -> Value {
    json!({"message": {"token": token, "data": {"k": v}}})
}

/// Minimal plain-HTTP/1.1 request to the stats endpoint.
pub async fn stats_http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Value) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let r = tokio::time::timeout(T, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let r = collect(r).await.unwrap();
    let v = if r.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&r.body)
            .unwrap_or(Value::String(String::from_utf8_lossy(&r.body).into()))
    };
    (r.status, v)
}
