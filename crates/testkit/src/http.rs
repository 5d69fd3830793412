//! One HTTP/1.1 GET for the admin endpoints (SPEC §6): `/healthz`,
//! `/readyz`, `/metrics`, `/api/v1/...`, optionally with a bearer token.
//!
//! `Connection: close`, so the body is everything after the head; a
//! `Transfer-Encoding: chunked` body is decoded, a `Content-Length` one cut
//! to its length.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one request may take, connect to last byte.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed GET.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting, writing or reading failed.
    #[error("GET {path} from {addr}: {source}")]
    Io {
        /// Server.
        addr: SocketAddr,
        /// Path asked for.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// No complete answer within [`HTTP_TIMEOUT`].
    #[error("GET {path} from {addr}: no answer within {HTTP_TIMEOUT:?}")]
    Timeout {
        /// Server.
        addr: SocketAddr,
        /// Path asked for.
        path: String,
    },
    /// The answer is not HTTP/1.x as expected.
    #[error("GET {path} from {addr}: bad answer: {problem}")]
    Bad {
        /// Server.
        addr: SocketAddr,
        /// Path asked for.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// `GET path` from `addr` (with `Authorization: Bearer <bearer>` when
/// given): the status code and the decoded body.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> Result<(u16, String), HttpError> {
    let io = |source| HttpError::Io {
        addr,
        path: path.to_string(),
        source,
    };
    let bad = |problem: String| HttpError::Bad {
        addr,
        path: path.to_string(),
        problem,
    };
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
        let auth = bearer
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.map_err(io)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.map_err(io)?;
        Ok::<_, HttpError>(raw)
    };
    let raw = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| HttpError::Timeout {
            addr,
            path: path.to_string(),
        })??;
    parse_response(&raw).map_err(bad)
}

/// Status and body of a complete HTTP/1.x response.
fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    parse_full(raw).map(|r| (r.status, r.body))
}

/// A complete HTTP/1.x response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header fields in order (names as sent).
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: String,
}

impl HttpResponse {
    /// The first header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Parses a complete HTTP/1.x response.
pub(crate) fn parse_full(raw: &[u8]) -> Result<HttpResponse, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of the header")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|e| format!("header: {e}"))?;
    let body = &raw[split + 4..];
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(body)?
    } else if let Some(len) = header("content-length") {
        let n: usize = len
            .parse()
            .map_err(|e| format!("content-length {len:?}: {e}"))?;
        body.get(..n)
            .ok_or_else(|| format!("body of {} bytes, content-length {n}", body.len()))?
            .to_vec()
    } else {
        body.to_vec()
    };
    let body = String::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Decodes a chunked body (chunk extensions and trailers ignored).
fn dechunk(mut s: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = s
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line without CRLF")?;
        let line = std::str::from_utf8(&s[..eol]).map_err(|e| format!("chunk size: {e}"))?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let n = usize::from_str_radix(size, 16).map_err(|e| format!("chunk size {size:?}: {e}"))?;
        let rest = &s[eol + 2..];
        if n == 0 {
            return Ok(out);
        }
        let chunk = rest
            .get(..n)
            .ok_or_else(|| format!("chunk of {n} bytes, {} left", rest.len()))?;
        out.extend_from_slice(chunk);
        s = rest
            .get(n..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or("chunk without its CRLF")?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn plain_chunked_and_sized_bodies() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nx: y\r\n\r\nhello").unwrap(),
            (200, "hello".to_string())
        );
        assert_eq!(
            parse_response(
                b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\na\r\n0123456789\r\n0\r\n\r\n"
            )
            .unwrap(),
            (401, "abc0123456789".to_string())
        );
        assert_eq!(
            parse_response(b"HTTP/1.0 503 x\r\ncontent-length: 2\r\n\r\nokEXTRA").unwrap(),
            (503, "ok".to_string())
        );
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
                .is_err()
        );
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn get_from_a_real_listener_sends_the_bearer_token() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
            String::from_utf8(req).unwrap()
        });
        let (st, body) = http_get(addr, "/api/v1/x?y=1", Some("tok")).await.unwrap();
        assert_eq!((st, body.as_str()), (200, "hi"));
        let req = server.await.unwrap();
        assert!(req.starts_with("GET /api/v1/x?y=1 HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("\r\nAuthorization: Bearer tok\r\n"), "{req}");
    }
}
