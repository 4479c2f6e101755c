//! The Grafana dashboards only query metrics hookline defines (a renamed metric must not
//! leave a silently empty panel behind).

use std::collections::BTreeSet;

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("hookline_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_')
        {
            end += 1;
        }
        out.insert(text[start..end].to_string());
        i = end;
    }
    out
}

#[test]
fn dashboards_reference_only_defined_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let defined = std::fs::read_to_string(format!("{root}/src/metrics.rs")).unwrap();
    let defined: BTreeSet<String> = metric_names(&defined);
    let mut checked = 0;
    for entry in std::fs::read_dir(format!("{root}/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is valid JSON");
            assert!(dash["panels"].as_array().is_some_and(|p| !p.is_empty()), "{} has no panels", path.display());
            for name in metric_names(&text) {
                let base = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
                assert!(
                    defined.contains(base),
                    "{} queries {name}, which src/metrics.rs does not define",
                    path.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 10, "expected the dashboards to query hookline metrics, checked {checked}");
}

/// Every series a dashboard queries exists on a daemon that has done nothing yet, so a new
/// install's panels show zero ("none yet"), not "No data" that reads as broken.
#[tokio::test]
async fn a_fresh_daemon_exports_every_metric_the_dashboards_query() {
    let app = crate::support::TestApp::start().await;
    let _ = app.metrics().await; // the first scrape is a request: its own HTTP series
    let exported = metric_names(&app.metrics().await);
    let root = env!("CARGO_MANIFEST_DIR");
    let mut missing = BTreeSet::new();
    for entry in std::fs::read_dir(format!("{root}/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            for name in metric_names(&std::fs::read_to_string(&path).unwrap()) {
                if !exported.contains(&name) {
                    missing.insert(format!("{name} ({})", path.file_name().unwrap().to_string_lossy()));
                }
            }
        }
    }
    assert!(missing.is_empty(), "queried by a dashboard, not exported by a fresh daemon: {missing:?}");
}
