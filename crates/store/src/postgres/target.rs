//! Where the PostgreSQL store lives (SPEC §12 `store.url`): the parsed URL,
//! shown everywhere without its password.

use std::time::Duration;
use tokio_postgres::config::Host;

/// How long a connection attempt may take when the URL does not say
/// (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed `postgres://` URL. `Display` and `Debug` show
/// `postgres://user@host:port/database`, never the password.
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    shown: String,
}

impl PgTarget {
    /// Parses `url` (`postgres://user[:password]@host[:port]/database[?…]`
    /// or the `key=value` form). Without a password in it, `pgpassword`
    /// (`PGPASSWORD` of the environment, as libpq reads it) is used. The
    /// error never contains the URL.
    pub fn parse(url: &str, pgpassword: Option<&str>) -> Result<PgTarget, String> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| {
                let text = e.to_string();
                // tokio-postgres names options, not values; stay safe anyway.
                if url.len() > 3 && text.contains(url) {
                    "not a valid PostgreSQL URL".to_string()
                } else {
                    format!("not a valid PostgreSQL URL ({text})")
                }
            })?;
        if matches!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        ) {
            return Err(
                "the PostgreSQL URL asks for TLS (sslmode=require), which gimmm does not speak to the database yet; use a loopback or private-network connection (sslmode=disable or prefer)".into(),
            );
        }
        if config.get_hosts().is_empty() {
            return Err("the PostgreSQL URL names no host".into());
        }
        if config.get_user().is_none() {
            return Err("the PostgreSQL URL names no user (postgres://USER@host/db)".into());
        }
        if config.get_password().is_none() {
            if let Some(pw) = pgpassword.filter(|p| !p.is_empty()) {
                config.password(pw);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("gimmm");
        }
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(Host::Unix(p)) => p.display().to_string(),
            None => String::new(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or_default();
        let db = config.get_dbname().unwrap_or(user);
        let shown = format!("postgres://{user}@{host}:{port}/{db}");
        Ok(PgTarget { config, shown })
    }

    /// The same server, another database (tests create one each).
    pub fn with_dbname(&self, db: &str) -> PgTarget {
        let mut t = self.clone();
        t.config.dbname(db);
        if let Some(i) = t.shown.rfind('/') {
            t.shown.truncate(i + 1);
            t.shown.push_str(db);
        }
        t
    }

    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

impl std::fmt::Display for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgTarget({})", self.shown)
    }
}

/// Connects on `target` and runs the connection on its own task; the task
/// ends when the client is dropped.
pub(crate) async fn connect(
    target: &PgTarget,
    role: &'static str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), crate::StoreError> {
    // `gimmm-writer` / `gimmm-reader` in pg_stat_activity.
    let mut config = target.config().clone();
    let name = format!(
        "{}-{role}",
        config.get_application_name().unwrap_or("gimmm")
    );
    config.application_name(&name);
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(super::pg(target, "connecting"))?;
    let shown = target.to_string();
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(store = %shown, role, error = %e, "postgres connection lost");
        }
    });
    // Plan every statement for its values and the table as it is now: a
    // prepared statement's generic plan is made once, and one made while
    // the tables were still small scans them whole for ever after
    // (measured: the final-results UPDATE at 100 % of a core at 10k msg/s).
    client
        .batch_execute("SET plan_cache_mode = force_custom_plan")
        .await
        .map_err(super::pg(target, "setting up the connection"))?;
    Ok((client, task))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_password_is_never_shown() {
        let t = PgTarget::parse("postgres://gimmm:s3cret-pw@db.internal:6543/prod", None).unwrap();
        assert_eq!(t.to_string(), "postgres://gimmm@db.internal:6543/prod");
        assert!(!format!("{t:?}").contains("s3cret"));
        assert_eq!(t.config().get_password(), Some(&b"s3cret-pw"[..]));
        let other = t.with_dbname("t1");
        assert_eq!(other.to_string(), "postgres://gimmm@db.internal:6543/t1");
    }

    #[test]
    fn pgpassword_fills_in_and_bad_urls_are_named_without_the_url() {
        let t = PgTarget::parse("postgres://gimmm@127.0.0.1/gimmm", Some("from-env")).unwrap();
        assert_eq!(t.config().get_password(), Some(&b"from-env"[..]));
        let t = PgTarget::parse("postgres://gimmm:in-url@127.0.0.1/gimmm", Some("env")).unwrap();
        assert_eq!(t.config().get_password(), Some(&b"in-url"[..]));
        for bad in [
            "postgres://gimmm:pw-xyz@127.0.0.1:notaport/db",
            "mysql://gimmm:pw-xyz@127.0.0.1/db",
            "postgres://:pw-xyz@/db",
            "postgres://gimmm:pw-xyz@127.0.0.1/db?sslmode=require",
        ] {
            let e = PgTarget::parse(bad, None).unwrap_err();
            assert!(!e.contains("pw-xyz"), "{e}");
            assert!(e.contains("PostgreSQL"), "{e}");
        }
    }
}
