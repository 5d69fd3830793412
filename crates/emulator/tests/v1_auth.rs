//! The service account, the token endpoint and the bearer checks of the FCM
//! HTTP v1 emulator (SPEC §9), over real TLS.
#![allow(clippy::unwrap_used)]

mod v1_common;

use std::time::Duration;

use emulator::v1::{
    V1Config, V1Faults, CLOUD_PLATFORM_SCOPE, ERROR_INFO_TYPE, FCM_ERROR_TYPE,
    GOOGLE_LEGACY_TOKEN_AUDIENCE, GOOGLE_TOKEN_AUDIENCE,
};
use serde_json::{json, Value};
use v1_common::*;

#[tokio::test]
async fn service_account_key_file_is_written_and_private() {
    let dir = tempfile::tempdir().unwrap();
    let sa_path = dir.path().join("sa.json");
    let ca_path = dir.path().join("ca.pem");
    // An old, world-readable file is replaced and tightened.
    std::fs::write(&sa_path, "old").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sa_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let emu = start_with(V1Config {
        project_id: "my-proj".into(),
        service_account_out: Some(sa_path.clone()),
        ca_out: Some(ca_path.clone()),
        ..V1Config::default()
    })
    .await;

    let written = std::fs::read_to_string(&sa_path).unwrap();
    assert_eq!(written, emu.service_account_json());
    let v: Value = serde_json::from_str(&written).unwrap();
    assert_eq!(v["type"], "service_account");
    assert_eq!(v["project_id"], "my-proj");
    assert_eq!(v["private_key_id"], emu.private_key_id());
    assert_eq!(v["private_key_id"].as_str().unwrap().len(), 40);
    assert!(v["private_key"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert_eq!(v["client_email"], emu.client_email());
    assert!(emu
        .client_email()
        .ends_with("@my-proj.iam.gserviceaccount.com"));
    assert_eq!(v["client_id"], emu.client_id());
    assert_eq!(
        v["token_uri"],
        format!("https://127.0.0.1:{}/token", emu.addr().port())
    );
    assert_eq!(v["token_uri"], emu.token_uri());
    assert_eq!(v["auth_uri"], "https://accounts.google.com/o/oauth2/auth");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sa_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "key file readable by others: {mode:o}");
    }
    assert_eq!(std::fs::read_to_string(&ca_path).unwrap(), emu.ca_pem());

    // The key never shows in Debug or the start-up lines.
    let printed = format!("{emu:?}\n{}", emu.describe().join("\n"));
    assert!(!printed.contains("PRIVATE KEY"), "{printed}");
    assert!(printed.contains("service account written to"));
    assert!(printed.contains("project id my-proj"));
    emu.shutdown().await;
}

#[tokio::test]
async fn token_issued_for_both_audiences_and_scopes() {
    let emu = start(V1Faults::default()).await;
    let mut c = h1(&emu).await;

    let r = c
        .post("/token", &[FORM], grant_body(&sign(&emu, &claims(&emu))))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let v = r.json();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);
    let t1 = v["access_token"].as_str().unwrap().to_owned();
    assert!(t1.starts_with("ya29."));

    for (aud, scope) in [
        (GOOGLE_TOKEN_AUDIENCE, CLOUD_PLATFORM_SCOPE),
        (
            GOOGLE_LEGACY_TOKEN_AUDIENCE,
            "openid https://www.googleapis.com/auth/firebase.messaging",
        ),
    ] {
        let mut cl = claims(&emu);
        cl["aud"] = aud.into();
        cl["scope"] = scope.into();
        let r = c
            .post("/token", &[FORM], grant_body(&sign(&emu, &cl)))
            .await;
        assert_eq!(r.status, 200, "{aud}: {:?}", r.body);
        assert_ne!(r.json()["access_token"].as_str().unwrap(), t1);
    }
    // Also over HTTP/2.
    let mut c2 = h2(&emu).await;
    let r = c2
        .post("/token", &[FORM], grant_body(&sign(&emu, &claims(&emu))))
        .await;
    assert_eq!(r.status, 200);

    let s = emu.stats();
    assert_eq!(s.token_requests, 4);
    assert_eq!(s.tokens_issued, 4);
    assert_eq!(s.tokens_refused, 0);
    emu.shutdown().await;
}

#[tokio::test]
async fn token_refusals_name_their_reason() {
    let emu = start(V1Faults::default()).await;
    let other = start(V1Faults::default()).await;
    let mut c = h1(&emu).await;
    let n = now();

    let with = |k: &str, v: Value| {
        let mut cl = claims(&emu);
        cl[k] = v;
        sign(&emu, &cl)
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "signature",
            grant_body(&sign_with(&service_account(&other), &claims(&emu))),
            "invalid_grant",
        ),
        (
            "issuer",
            grant_body(&with("iss", "someone@else.iam.gserviceaccount.com".into())),
            "invalid_grant",
        ),
        (
            "audience",
            grant_body(&with("aud", "https://example.com/token".into())),
            "invalid_grant",
        ),
        (
            "scope",
            grant_body(&with(
                "scope",
                "https://www.googleapis.com/auth/devstorage.read_only".into(),
            )),
            "invalid_grant",
        ),
        (
            "scope",
            grant_body(&with("scope", Value::Null)),
            "invalid_grant",
        ),
        (
            "lifetime",
            grant_body(&with("exp", (n + 3601).into())),
            "invalid_grant",
        ),
        (
            "lifetime",
            grant_body(&with("exp", Value::Null)),
            "invalid_grant",
        ),
        (
            "iat",
            grant_body(&{
                let mut cl = claims(&emu);
                cl["iat"] = (n - 600).into();
                cl["exp"] = (n + 3000).into();
                sign(&emu, &cl)
            }),
            "invalid_grant",
        ),
        (
            "iat",
            grant_body(&{
                let mut cl = claims(&emu);
                cl["iat"] = (n + 600).into();
                cl["exp"] = (n + 1200).into();
                sign(&emu, &cl)
            }),
            "invalid_grant",
        ),
        ("malformed", grant_body("not-a-jwt"), "invalid_grant"),
        (
            "grant_type",
            b"grant_type=client_credentials&assertion=x".to_vec(),
            "unsupported_grant_type",
        ),
        (
            "assertion_missing",
            format!(
                "grant_type={}",
                "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
            )
            .into_bytes(),
            "invalid_request",
        ),
    ];
    for (reason, body, error) in &cases {
        let r = c.post("/token", &[FORM], body.clone()).await;
        assert_eq!(r.status, 400, "{reason}");
        let v = r.json();
        assert_eq!(v["error"], *error, "{reason}: {v}");
        assert!(v["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()));
        assert!(v.get("access_token").is_none());
    }
    // Another key presented under this account's kid is refused too.
    let mut forged_sa = service_account(&emu);
    forged_sa["private_key"] = service_account(&other)["private_key"].clone();
    let r = c
        .post(
            "/token",
            &[FORM],
            grant_body(&sign_with(&forged_sa, &claims(&emu))),
        )
        .await;
    assert_eq!(r.json()["error_description"], "Invalid JWT Signature.");

    let s = emu.stats();
    assert_eq!(s.tokens_issued, 0);
    assert_eq!(s.tokens_refused, cases.len() as u64 + 1);
    assert_eq!(s.token_refusal("signature"), 2);
    for reason in [
        "issuer",
        "audience",
        "malformed",
        "grant_type",
        "assertion_missing",
    ] {
        assert_eq!(s.token_refusal(reason), 1, "{reason}");
    }
    for reason in ["scope", "lifetime", "iat"] {
        assert_eq!(s.token_refusal(reason), 2, "{reason}");
    }
    emu.shutdown().await;
    other.shutdown().await;
}

#[tokio::test]
async fn failing_token_endpoint_fault() {
    let emu = start(V1Faults {
        token_endpoint_error: Some(500),
        ..V1Faults::default()
    })
    .await;
    let mut c = h1(&emu).await;
    let good = grant_body(&sign(&emu, &claims(&emu)));
    let r = c.post("/token", &[FORM], good.clone()).await;
    assert_eq!(r.status, 500);
    emu.set_faults(V1Faults {
        token_endpoint_error: Some(400),
        ..V1Faults::default()
    })
    .unwrap();
    let r = c.post("/token", &[FORM], good.clone()).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_grant");
    emu.set_faults(V1Faults::default()).unwrap();
    let r = c.post("/token", &[FORM], good).await;
    assert_eq!(r.status, 200);
    let s = emu.stats();
    assert_eq!(s.token_refusal("fault"), 2);
    assert_eq!(s.tokens_issued, 1);
    assert!(emu
        .set_faults(V1Faults {
            token_endpoint_error: Some(403),
            ..V1Faults::default()
        })
        .is_err());
    emu.shutdown().await;
}

fn assert_no_fcm_error(r: &Resp) {
    assert!(
        r.detail(FCM_ERROR_TYPE).is_none(),
        "unexpected FcmError: {}",
        r.json()
    );
}

#[tokio::test]
async fn bearer_and_project_checks() {
    let emu = start(V1Faults::default()).await;
    let token = access_token(&emu).await;
    let mut c = h2(&emu).await;
    let path = send_path(&emu);
    let body = serde_json::to_vec(&msg_to(TOKEN, "v")).unwrap();

    // Missing.
    let r = c.post(&path, &[JSON_CT], body.clone()).await;
    assert_eq!(r.status, 401);
    let v = r.json();
    assert_eq!(v["error"]["code"], 401);
    assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
    assert_no_fcm_error(&r);
    assert_eq!(
        r.detail(ERROR_INFO_TYPE).unwrap()["reason"],
        "CREDENTIALS_MISSING"
    );
    // Unknown, and a non-bearer scheme.
    for auth in ["Bearer ya29.not-issued-here", "Basic dXNlcjpwdw=="] {
        let r = c
            .post(&path, &[("authorization", auth), JSON_CT], body.clone())
            .await;
        assert_eq!(r.status, 401, "{auth}");
        assert_eq!(r.json()["error"]["status"], "UNAUTHENTICATED");
        assert_no_fcm_error(&r);
    }
    // Another project.
    let auth = format!("Bearer {token}");
    let r = c
        .post(
            "/v1/projects/someone-else/messages:send",
            &[("authorization", &auth), JSON_CT],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["status"], "PERMISSION_DENIED");
    assert_no_fcm_error(&r);
    // The project, by id and by number.
    for p in [emu.project_id().to_owned(), emu.project_number().to_owned()] {
        let r = c
            .post(
                &format!("/v1/projects/{p}/messages:send"),
                &[("authorization", &auth), JSON_CT],
                body.clone(),
            )
            .await;
        assert_eq!(r.status, 200, "{p}: {:?}", r.body);
    }
    // Revoked tokens are unknown.
    emu.revoke_tokens();
    let r = c
        .post(&path, &[("authorization", &auth), JSON_CT], body.clone())
        .await;
    assert_eq!(r.status, 401);

    let s = emu.stats();
    assert_eq!(s.unauthenticated, 4);
    assert_eq!(s.permission_denied, 1);
    assert_eq!(s.status(401), 4);
    assert_eq!(s.status(403), 1);
    assert_eq!(s.status(200), 2);
    assert!(s.by_error_code.is_empty(), "{:?}", s.by_error_code);
    emu.shutdown().await;
}

#[tokio::test]
async fn short_lived_token_expires() {
    let emu = start(V1Faults {
        token_lifetime_secs: Some(1),
        ..V1Faults::default()
    })
    .await;
    let mut c = h1(&emu).await;
    let r = c
        .post("/token", &[FORM], grant_body(&sign(&emu, &claims(&emu))))
        .await;
    // The emulator issued the token before this answer arrived, so it has
    // certainly expired one lifetime after this instant.
    let received = tokio::time::Instant::now();
    let v = r.json();
    assert_eq!(v["expires_in"], 1);
    let mut s = Sender {
        c: h2(&emu).await,
        token: v["access_token"].as_str().unwrap().to_owned(),
        path: send_path(&emu),
    };
    assert_eq!(s.send(&msg_to(TOKEN, "1")).await.status, 200);
    tokio::time::sleep_until(received + Duration::from_secs(1)).await;
    let r = s.send(&msg_to(TOKEN, "2")).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.detail(ERROR_INFO_TYPE).unwrap()["reason"],
        "ACCESS_TOKEN_EXPIRED"
    );
    assert_eq!(r.error_code(), None);

    // Back to the configured lifetime for new tokens.
    emu.set_faults(V1Faults::default()).unwrap();
    let r = c
        .post("/token", &[FORM], grant_body(&sign(&emu, &claims(&emu))))
        .await;
    assert_eq!(r.json()["expires_in"], 3600);
    emu.shutdown().await;
}

#[tokio::test]
async fn configured_token_lifetime() {
    let emu = start_with(V1Config {
        token_lifetime: Duration::from_secs(120),
        ..V1Config::default()
    })
    .await;
    let mut c = h1(&emu).await;
    let r = c
        .post("/token", &[FORM], grant_body(&sign(&emu, &claims(&emu))))
        .await;
    assert_eq!(r.json()["expires_in"], json!(120));
    emu.shutdown().await;
}
