//! The shipped example configuration (issue 4): it loads, it documents every
//! key the config schema has (found from serde's own "expected one of"
//! lists, so a new key without documentation fails here), and its values are
//! the built-in defaults.
#![allow(clippy::unwrap_used)]

use gateway::config::{Config, FcmConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/gimmm.toml");

fn load_text(text: &str) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, text).unwrap();
    Config::load_with_env(Some(&p), &[]).map_err(|e| e.to_string())
}

/// The keys serde accepts in `section` (as the table header to write, e.g.
/// `[fcm]`, `[[bal.sessions]]`, or "" for the top level).
fn schema_keys(header: &str) -> BTreeSet<String> {
    let text = format!("{header}\nzzz_not_a_key = 1\n");
    let err = load_text(&text).unwrap_err();
    let list = err
        .split_once("expected ")
        .map(|(_, rest)| rest.lines().next().unwrap_or(""))
        .unwrap_or_else(|| panic!("no key list in {err}"));
    let keys: BTreeSet<String> = list
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, k)| k.to_string())
        .collect();
    assert!(!keys.is_empty(), "{err}");
    keys
}

/// (section, key) of every `key = value` line of the example, commented-out
/// ones included, and the sections whose key lines lack a comment above.
fn example_keys(text: &str) -> (BTreeMap<String, BTreeSet<String>>, Vec<String>) {
    let mut section = String::new();
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut undocumented = Vec::new();
    let mut prev = "";
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_string();
        } else if let Some((k, _)) = line.trim_start_matches(['#', ' ']).split_once('=') {
            let k = k.trim();
            if !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                keys.entry(section.clone())
                    .or_default()
                    .insert(k.to_string());
                if !line.starts_with('#') && !prev.starts_with('#') {
                    undocumented.push(format!("{section}.{k}"));
                }
            }
        }
        if !line.is_empty() {
            prev = line;
        }
    }
    (keys, undocumented)
}

#[test]
fn example_config_loads_with_config_load() {
    let cfg = Config::load(Some(Path::new(EXAMPLE))).unwrap();
    assert_eq!(cfg.bal.sessions.len(), 1);
    assert_eq!(cfg.bal.sessions[0].session_id, "com.example.app");
    assert!(
        !cfg.fcm.has_credentials(),
        "the example must run against the built-in emulator out of the box"
    );
}

#[test]
fn example_config_values_are_the_defaults() {
    let mut cfg = Config::load_with_env(Some(Path::new(EXAMPLE)), &[]).unwrap();
    // `ca_file = ""` means "none".
    if cfg
        .fcm
        .ca_file
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        cfg.fcm.ca_file = None;
    }
    let d = Config::default();
    assert_eq!(
        format!("{:?}", cfg.fcm),
        format!("{:?}", FcmConfig::default())
    );
    assert_eq!(format!("{:?}", cfg.retry), format!("{:?}", d.retry));
    assert_eq!(format!("{:?}", cfg.store), format!("{:?}", d.store));
    assert_eq!(format!("{:?}", cfg.admin), format!("{:?}", d.admin));
    // `tls_*_file = ""` means "none".
    for f in [
        &mut cfg.ingress.tls_cert_file,
        &mut cfg.ingress.tls_key_file,
    ] {
        if f.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            *f = None;
        }
    }
    assert_eq!(format!("{:?}", cfg.ingress), format!("{:?}", d.ingress));
    let s = &cfg.bal.sessions[0];
    assert!(s.ingress_keys.is_empty() && s.jwks_file().is_none() && !s.takes_ingress());
    let mut bal = cfg.bal;
    bal.sessions.clear();
    assert_eq!(format!("{bal:?}"), format!("{:?}", d.bal));
}

#[test]
fn example_config_documents_every_key() {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let (found, undocumented) = example_keys(&text);
    assert!(
        undocumented.is_empty(),
        "keys without a comment: {undocumented:?}"
    );
    let sections = [
        ("fcm", "[fcm]"),
        ("retry", "[retry]"),
        ("bal", "[bal]"),
        ("bal.sessions", "[[bal.sessions]]"),
        ("store", "[store]"),
        ("admin", "[admin]"),
        ("ingress", "[ingress]"),
        ("cluster", "[cluster]"),
    ];
    let top = schema_keys("");
    for (name, header) in sections {
        let want = schema_keys(header);
        let have = found.get(name).cloned().unwrap_or_default();
        // `bal.sessions` is a key of [bal] written as its own table.
        let want: BTreeSet<String> = want.into_iter().filter(|k| k != "sessions").collect();
        let missing: Vec<_> = want.difference(&have).collect();
        assert!(
            missing.is_empty(),
            "examples/gimmm.toml lacks {name}.{missing:?}"
        );
        let extra: Vec<_> = have.difference(&want).collect();
        assert!(
            extra.is_empty(),
            "examples/gimmm.toml has unknown {name}.{extra:?}"
        );
        if !name.contains('.') {
            assert!(top.contains(name), "{name} is not a top-level section");
        }
    }
    assert_eq!(
        top.len(),
        7,
        "a new top-level section needs documenting: {top:?}"
    );
}

#[test]
fn secrets_from_env_and_file_stay_out_of_debug() {
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("fcm.key");
    std::fs::write(&keyfile, "FILEKEY-7f3a91\n").unwrap();
    let env: Vec<(String, String)> = [
        ("GIMMM_FCM__SENDER_ID", "4242"),
        ("GIMMM_FCM__SERVER_KEY_FILE", keyfile.to_str().unwrap()),
        ("GIMMM_ADMIN__TOKEN", "ADMINTOK-55e2c0"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let cfg = Config::load_with_env(Some(Path::new(EXAMPLE)), &env).unwrap();
    assert_eq!(cfg.fcm.server_key.expose(), "FILEKEY-7f3a91");
    assert_eq!(cfg.admin.token.expose(), "ADMINTOK-55e2c0");
    assert!(cfg.fcm.has_credentials());
    let dbg = format!("{cfg:?} {cfg:#?}");
    for secret in ["FILEKEY-7f3a91", "ADMINTOK-55e2c0", "dev-token"] {
        assert!(!dbg.contains(secret), "{secret} in Debug output: {dbg}");
    }
    assert!(dbg.contains("<redacted>"));
}

#[test]
fn file_errors_name_the_key_and_line() {
    let ok = "[[bal.sessions]]\nsession_id = \"a\"\ntoken = \"t\"\n";
    let e = load_text(&format!("{ok}[fcm]\nport = 70000\n")).unwrap_err();
    assert!(e.contains("fcm.port") && e.contains("line 5"), "{e}");
    let e = load_text(&format!("{ok}[retry]\nmax_ms = \"soon\"\n")).unwrap_err();
    assert!(e.contains("retry.max_ms") && e.contains("line 5"), "{e}");
    let e = load_text(&format!("{ok}[admin]\nlisten_on = \"x\"\n")).unwrap_err();
    assert!(e.contains("listen_on") && e.contains("admin"), "{e}");
}
