//! Interop with a real XMPP server: Prosody, started by `.ci/prosody-setup.sh`.
//!
//! ```sh
//! .ci/prosody-setup.sh
//! set -a; . /tmp/gimmm-prosody/env; set +a
//! cargo test -p xmpp --test prosody_interop
//! ```
//!
//! Without `GIMMM_PROSODY_ADDR` the test is skipped, unless `CI` is set, in
//! which case it fails: CI must not silently skip it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use xmpp::connect::{Connector, DirectTls};
use xmpp::reader::Event;
use xmpp::{writer, ClientParams, XmppError, XmppStream};

struct Env {
    host: String,
    port: u16,
    ca: String,
    user: String,
    password: String,
    domain: String,
}

fn env() -> Option<Env> {
    let Ok(addr) = std::env::var("GIMMM_PROSODY_ADDR") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but GIMMM_PROSODY_ADDR is not: run .ci/prosody-setup.sh and source /tmp/gimmm-prosody/env"
        );
        eprintln!(
            "skipping Prosody interop test: GIMMM_PROSODY_ADDR not set (run .ci/prosody-setup.sh, then `set -a; . /tmp/gimmm-prosody/env; set +a`)"
        );
        return None;
    };
    let var = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| panic!("{k} must be set with GIMMM_PROSODY_ADDR"))
    };
    let (host, port) = addr
        .rsplit_once(':')
        .expect("GIMMM_PROSODY_ADDR is host:port");
    Some(Env {
        host: host.to_owned(),
        port: port.parse().expect("port"),
        ca: var("GIMMM_PROSODY_CA"),
        user: var("GIMMM_PROSODY_USER"),
        password: var("GIMMM_PROSODY_PASSWORD"),
        domain: var("GIMMM_PROSODY_DOMAIN"),
    })
}

fn params(env: &Env, password: &str, resource: Option<&str>) -> ClientParams {
    // Prosody wants the bare localpart as the SASL PLAIN authcid.
    let localpart = env.user.split('@').next().unwrap_or_default();
    ClientParams {
        to: env.domain.clone(),
        username: localpart.to_owned(),
        password: password.to_owned(),
        resource: resource.map(str::to_owned),
    }
}

async fn connect(env: &Env) -> XmppStream<xmpp::connect::BoxStream> {
    let connector = DirectTls::new(Some(std::path::Path::new(&env.ca))).unwrap();
    let io = connector.connect(&env.host, env.port).await.unwrap();
    XmppStream::new(io, xmpp::DEFAULT_MAX_STANZA_BYTES)
}

#[tokio::test]
async fn prosody_login_bind_and_ping() {
    let Some(env) = env() else { return };
    tokio::time::timeout(Duration::from_secs(20), async {
        // Server-chosen resource.
        let mut s = connect(&env).await;
        let jid = s
            .negotiate_client(params(&env, &env.password, None))
            .await
            .unwrap();
        eprintln!("Prosody bound {jid}");
        let localpart = env.user.split('@').next().unwrap();
        assert!(
            jid.starts_with(&format!("{localpart}@{}/", env.domain)),
            "unexpected jid {jid}"
        );

        // The stream is usable afterwards: an XEP-0199 ping gets a result,
        // and whitespace keepalives are fine.
        s.send(writer::KEEPALIVE).await.unwrap();
        s.send(
            format!(
                "<iq type='get' id='ping1' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
                env.domain
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        loop {
            match s.next_event().await.unwrap() {
                Event::Iq(iq) if iq.id.as_deref() == Some("ping1") => {
                    assert_eq!(iq.kind, "result");
                    break;
                }
                Event::Keepalive | Event::Other { .. } | Event::Message(_) | Event::Iq(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        s.send(writer::STREAM_END.as_bytes()).await.unwrap();
        loop {
            match s.next_event().await {
                Ok(Event::StreamEnd) | Err(XmppError::Closed) => break,
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }

        // Requested resource.
        let mut s = connect(&env).await;
        let jid = s
            .negotiate_client(params(&env, &env.password, Some("gimmm-test")))
            .await
            .unwrap();
        assert_eq!(jid, format!("{localpart}@{}/gimmm-test", env.domain));
    })
    .await
    .expect("timed out talking to Prosody");
}

#[tokio::test]
async fn prosody_wrong_password_is_auth_failed() {
    let Some(env) = env() else { return };
    let mut s = connect(&env).await;
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        s.negotiate_client(params(&env, "definitely-wrong", None)),
    )
    .await
    .expect("timed out talking to Prosody")
    .unwrap_err();
    assert!(
        matches!(&err, XmppError::AuthFailed(c) if c == "not-authorized"),
        "{err}"
    );
    assert!(!format!("{err} {err:?}").contains("definitely-wrong"));
}
