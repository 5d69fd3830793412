//! `/api/v1/cluster` (SPEC §12): who writes the store. On SQLite one node;
//! on PostgreSQL (the tests' server, `GIMMM_TEST_POSTGRES_URL`, see
//! `.ci/postgres-setup.sh`; that half is skipped without it unless `CI` is
//! set) the writer lease, held by this node.
#![allow(clippy::unwrap_used)]

use emulator::{Emulator, EmulatorConfig};
use gateway::config::Secret;
use testkit::{emulator_config, http_get, in_process};

async fn cluster_view(store_url: Option<String>) -> serde_json::Value {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = emulator_config(&emu, dir.path(), &[("s", "t")]).unwrap();
    if let Some(url) = store_url {
        cfg.store.url = Secret::new(url);
        cfg.cluster.node_id = "node-x".into();
        cfg.cluster.lease_secs = 7;
    }
    let gw = in_process(&cfg, &emu).await.unwrap();
    let (status, body) = http_get(gw.admin_addr.unwrap(), "/api/v1/cluster", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    gw.stop().await;
    emu.shutdown().await;
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_is_one_node() {
    let v = cluster_view(None).await;
    assert_eq!(v["mode"], "single");
    assert!(v["store"].as_str().unwrap().starts_with("sqlite:"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_this_node_holds_the_writer_lease() {
    let Some(url) = store::conformance::postgres_scratch_url().await else {
        return;
    };
    let v = cluster_view(Some(url.clone())).await;
    assert_eq!(v["mode"], "writer_lease", "{v}");
    assert_eq!(v["node"]["id"], "node-x");
    assert_eq!(v["node"]["writes"], true);
    assert_eq!(v["lease"]["holder"], "node-x");
    assert_eq!(v["lease"]["epoch"], v["node"]["epoch"]);
    assert_eq!(v["lease"]["lease_ms"], 7000);
    let left = v["lease"]["expires_in_ms"].as_i64().unwrap();
    assert!(left > 0 && left <= 7000, "{v}");
    let shown = v["store"].as_str().unwrap();
    assert!(
        shown.starts_with("postgres://") && !shown.contains("gimmm-test-pw"),
        "{shown}"
    );
}
