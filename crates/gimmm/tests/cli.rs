//! The `gimmm` command line (issue 4): `check-config` on the shipped example
//! and on broken files (non-zero exit, the key named on stderr), and `--help`
//! of the main subcommands.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/gimmm.toml");
const SESSION: &str = "[[bal.sessions]]\nsession_id = \"a\"\ntoken = \"t\"\n";

fn gimmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gimmm"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("GIMMM_CONFIG")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn check_config(dir: &Path, name: &str, body: &str) -> Output {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    gimmm(&["check-config", p.to_str().unwrap()])
}

#[test]
fn check_config_accepts_the_example() {
    let out = gimmm(&["check-config", EXAMPLE]);
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status,
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(
        !stdout.contains("dev-token"),
        "a token was printed: {stdout}"
    );
}

#[test]
fn check_config_refuses_bad_files_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing_key = dir.path().join("no-such-dir/fcm.key");
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "unknown key",
            format!("{SESSION}[fcm]\nhots = \"x\"\n"),
            &["hots", "fcm"],
        ),
        (
            "wrong type",
            format!("{SESSION}[retry]\nmax_attempts = \"ten\"\n"),
            &["retry.max_attempts"],
        ),
        (
            "port out of range",
            format!("{SESSION}[fcm]\nport = 70000\n"),
            &["fcm.port"],
        ),
        (
            "port zero",
            format!("{SESSION}[fcm]\nport = 0\n"),
            &["fcm.port"],
        ),
        (
            "duplicate session id",
            format!("{SESSION}{SESSION}"),
            &["bal.sessions[1].session_id", "duplicate"],
        ),
        (
            "empty token",
            "[[bal.sessions]]\nsession_id = \"a\"\ntoken = \"\"\n".to_string(),
            &["bal.sessions[0].token"],
        ),
        (
            "unreadable server_key_file",
            format!(
                "{SESSION}[fcm]\nsender_id = \"1\"\nserver_key_file = \"{}\"\n",
                missing_key.display()
            ),
            &["fcm.server_key_file"],
        ),
        (
            "bad listen address",
            format!("{SESSION}[bal]\nlisten = \"localhost\"\n"),
            &["bal.listen"],
        ),
        (
            "no session",
            "[fcm]\nport = 5236\n".to_string(),
            &["bal.sessions"],
        ),
        ("not TOML", "[fcm\n".to_string(), &["line 1"]),
    ];
    for (i, (what, body, needles)) in cases.iter().enumerate() {
        let out = check_config(dir.path(), &format!("bad{i}.toml"), body);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{what}: accepted; stdout {}",
            text(&out.stdout)
        );
        for n in *needles {
            assert!(
                stderr.contains(n),
                "{what}: stderr does not name {n:?}: {stderr}"
            );
        }
        assert!(
            !stderr.contains("panicked"),
            "{what}: gimmm panicked: {stderr}"
        );
    }
}

#[test]
fn check_config_missing_file_fails() {
    let out = gimmm(&["check-config", "/nonexistent/gimmm.toml"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/gimmm.toml"));
}

#[test]
fn help_mentions_the_subcommands_and_flags() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--help"],
            &[
                "serve",
                "emulator",
                "send",
                "listen",
                "bench",
                "check-config",
                "--log-format",
            ],
        ),
        (&["serve", "--help"], &["--config", "--log-format"]),
        (
            &["emulator", "--help"],
            &[
                "--listen",
                "--sender-id",
                "--server-key",
                "--ca-out",
                "--stats-listen",
                "--nack-fraction",
                "--drain-after",
            ],
        ),
        (
            &["send", "--help"],
            &["--server", "--session", "--token", "--to", "--wait"],
        ),
        (&["check-config", "--help"], &["FILE"]),
    ];
    for (args, flags) in cases {
        let out = gimmm(args);
        assert!(out.status.success(), "gimmm {args:?} failed");
        let stdout = text(&out.stdout);
        for f in *flags {
            assert!(
                stdout.contains(f),
                "gimmm {args:?} does not mention {f}: {stdout}"
            );
        }
    }
    // The default token is not shown in help.
    let out = gimmm(&["send", "--help"]);
    assert!(!text(&out.stdout).contains("dev-token"));
}

#[test]
fn unknown_subcommand_fails() {
    let out = gimmm(&["frobnicate"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("frobnicate"));
}

/// A config with a secret on a broken line (the closing quote is missing,
/// as a new user may type it): `check-config` and `serve` say which file,
/// line and key, and print no part of the secret (SPEC §11).
#[test]
fn config_errors_never_print_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "AAAA-very-secret-server-key-1234";
    let cases = [
        format!("{SESSION}[fcm]\nsender_id = \"1\"\nserver_key = \"{secret}\n"),
        format!(
            "[[bal.sessions]]\nsession_id = \"a\"\ntoken = 42{}\n",
            &secret[..4]
        ),
        format!("{SESSION}[admin]\ntokn = \"{secret}\"\n"),
    ];
    for (i, body) in cases.iter().enumerate() {
        let p = dir.path().join(format!("secret{i}.toml"));
        std::fs::write(&p, body).unwrap();
        for cmd in [
            vec!["check-config", p.to_str().unwrap()],
            vec!["serve", "--config", p.to_str().unwrap()],
        ] {
            let out = gimmm(&cmd);
            assert!(!out.status.success(), "{cmd:?} accepted {body}");
            let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
            assert!(
                !all.contains(secret) && !all.contains("AAAA"),
                "{cmd:?} printed the secret: {all}"
            );
            assert!(all.contains(&format!("secret{i}.toml")), "{all}");
            assert!(all.contains("line "), "{all}");
        }
    }
}
