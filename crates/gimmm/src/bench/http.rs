//! A minimal HTTP/1.1 client for the emulator's stats and control
//! endpoint (SPEC §5), used with `--emulator-stats`.

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Minimal HTTP/1.1 client for the emulator's stats endpoint.
pub(super) async fn http(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<String> {
    let hostport = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut s = tokio::net::TcpStream::connect(&hostport)
        .await
        .with_context(|| format!("connecting to {hostport}"))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        bail!("bad HTTP answer from {hostport}");
    };
    if !head.starts_with("HTTP/1.1 2") {
        bail!(
            "{method} {path}: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut r = rest;
        while let Some((size, after)) = r.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            r = after[n..].trim_start_matches("\r\n");
        }
        return Ok(out);
    }
    Ok(rest.to_string())
}
