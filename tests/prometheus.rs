//! The dashboard and the alert rules on a real Prometheus.
//!
//! Starts `examples/server`, `examples/load` (the `Client` preset calling it, with an outage
//! window during which the destination answers 503) and a Prometheus scraping both every second
//! with `dashboards/alerts.yml` loaded, all on 127.0.0.1 and free ports. Then it checks, through
//! Prometheus's HTTP API:
//!
//! - every rule is loaded and evaluates without error;
//! - the breaker-open alert fires during the outage and clears after it;
//! - every panel query of `dashboards/tower-lifeline.json`, and every alert expression's query
//!   (the part before its threshold), returns data over the run.
//!
//! Ignored by default: it needs the `prometheus` binary and the two examples built, and takes
//! about a minute. `.ci/prometheus-check` installs Prometheus, builds the examples and runs it
//! (`cargo test --test prometheus -- --ignored`). `PROMETHEUS` names another binary.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout, Instant};

/// The outage the load driver plays: from this many seconds after its start ...
const OUTAGE_AFTER: u64 = 12;
/// ... for this many. Longer than the alert's `for: 10s` plus a few scrapes.
const OUTAGE_FOR: u64 = 20;
/// The `$__rate_interval` the panels would get from Grafana with a 1 s scrape interval.
const RATE_INTERVAL: &str = "10s";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The processes and the temporary directory of one run; dropping it stops and removes them.
struct Run {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Run {
    /// Starts `program` with its output in `<dir>/<name>.log` (kept in the report on failure).
    fn spawn(&mut self, name: &str, program: &Path, args: &[&str]) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        self.children.push(child);
    }

    /// The last lines each process wrote, for a failure message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["server", "load", "prometheus"] {
            let text =
                std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {name}.log (last lines)\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// A free port on 127.0.0.1 (released for the child to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where cargo put the examples: next to `deps/`, where this test binary is.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --example server --example load` first",
        path.display()
    );
    path
}

/// `application/x-www-form-urlencoded` for the query API's parameters.
fn form(pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        let mut out = String::new();
        for byte in text.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(byte as char)
                }
                _ => out.push_str(&format!("%{byte:02X}")),
            }
        }
        out
    };
    let pairs: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    pairs.join("&")
}

/// Prometheus's HTTP API on one address.
struct Api {
    http: HttpClient,
    base: String,
}

impl Api {
    /// `GET` or, with a form, `POST` `path`; the JSON answer, or why there is none.
    async fn call(&self, path: &str, form_body: Option<String>) -> Result<Value, String> {
        let uri = format!("{}{path}", self.base);
        let request = match form_body {
            None => http::Request::get(uri).body(Full::default()),
            Some(body) => http::Request::post(uri)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::from(body)),
        }
        .map_err(|e| e.to_string())?;
        let response = timeout(Duration::from_secs(10), self.http.request(request))
            .await
            .map_err(|_| "no answer in 10 s".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let json: Value = serde_json::from_slice(&body)
            .map_err(|_| format!("{status}: {}", String::from_utf8_lossy(&body)))?;
        if json["status"] != "success" {
            return Err(format!("{status}: {json}"));
        }
        Ok(json["data"].clone())
    }

    /// Evaluates `query` over `[start, end]` in 1 s steps: the series it returned.
    async fn query_range(&self, query: &str, start: f64, end: f64) -> Result<Vec<Value>, String> {
        let body = form(&[
            ("query", query),
            ("start", &format!("{start:.3}")),
            ("end", &format!("{end:.3}")),
            ("step", "1"),
        ]);
        let data = self.call("/api/v1/query_range", Some(body)).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Evaluates `query` now.
    async fn query(&self, query: &str) -> Result<Vec<Value>, String> {
        let data = self
            .call("/api/v1/query", Some(form(&[("query", query)])))
            .await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The state of the alert `name` now: `firing`, `pending`, or `None`.
    async fn alert_state(&self, name: &str) -> Result<Option<String>, String> {
        let data = self.call("/api/v1/alerts", None).await?;
        let alerts = data["alerts"].as_array().cloned().unwrap_or_default();
        let states = alerts
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .filter_map(|a| a["state"].as_str().map(str::to_owned));
        // One firing instance is enough for the alert to be firing.
        Ok(states.max_by_key(|s| s == "firing"))
    }
}

/// Every panel query of the dashboard, with Grafana's variables as the test's setup has them.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap().to_owned();
            let expr = expr
                .replace("$__rate_interval", RATE_INTERVAL)
                .replace("$job", ".+");
            assert!(
                !expr.contains('$'),
                "{title}: a variable the test does not know: {expr}"
            );
            queries.push((title.to_owned(), expr));
        }
    }
    queries
}

/// An alert expression's query without its threshold: `q > 0.05` → `q`. The rules file keeps
/// every alert in that form so that its query can be checked for data when it is not firing.
fn without_threshold(expr: &str) -> Option<&str> {
    let expr = expr.trim();
    let (rest, number) = expr.rsplit_once(' ')?;
    number.parse::<f64>().ok()?;
    let (query, op) = rest.trim_end().rsplit_once(' ')?;
    ["<", ">", "<=", ">=", "==", "!="]
        .contains(&op)
        .then_some(query.trim_end())
}

/// Seconds since the Unix epoch, as Prometheus's API takes them.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Polls `check` every 500 ms until it is true, for at most `limit`; whether it became true.
async fn wait_for<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if check().await {
            return true;
        }
        sleep(Duration::from_millis(500)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the prometheus binary and the examples built; run by .ci/prometheus-check"]
async fn the_dashboard_and_alerts_work_on_a_real_prometheus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("dashboards/tower-lifeline.json")).unwrap(),
    )
    .unwrap();
    let prometheus = PathBuf::from(std::env::var("PROMETHEUS").unwrap_or("prometheus".into()));
    let (server, load) = (example("server"), example("load"));

    let dir =
        std::env::temp_dir().join(format!("tower-lifeline-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let mut run = Run {
        children: Vec::new(),
        dir: dir.clone(),
    };
    let (server_port, load_port, prometheus_port) = (free_port(), free_port(), free_port());
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {rules}\n\
         scrape_configs:\n\
         \x20 - job_name: server\n    static_configs:\n      - targets: ['127.0.0.1:{server_port}']\n\
         \x20 - job_name: load\n    static_configs:\n      - targets: ['127.0.0.1:{load_port}']\n",
        rules = root.join("dashboards/alerts.yml").display(),
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();

    let server_addr = format!("127.0.0.1:{server_port}");
    run.spawn("server", &server, &["--addr", &server_addr]);
    run.spawn(
        "prometheus",
        &prometheus,
        &[
            &format!("--config.file={}", dir.join("prometheus.yml").display()),
            &format!("--storage.tsdb.path={}", dir.join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
            "--storage.tsdb.retention.time=1h",
        ],
    );
    let api = Api {
        http: Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
        base: format!("http://127.0.0.1:{prometheus_port}"),
    };
    // A reference the polling closures copy into their futures.
    let api = &api;
    let ready = wait_for(Duration::from_secs(30), || async move {
        api.call("/api/v1/status/buildinfo", None).await.is_ok()
    })
    .await;
    assert!(ready, "Prometheus did not come up in 30 s\n{}", run.logs());

    let started = unix_now();
    let started_at = Instant::now();
    let seconds = (OUTAGE_AFTER + OUTAGE_FOR + 30).to_string();
    run.spawn(
        "load",
        &load,
        &[
            "--target",
            &format!("http://{server_addr}"),
            "--metrics-addr",
            &format!("127.0.0.1:{load_port}"),
            "--seconds",
            &seconds,
            "--rate",
            "100",
            "--outage-after",
            &OUTAGE_AFTER.to_string(),
            "--outage-for",
            &OUTAGE_FOR.to_string(),
        ],
    );

    // Both targets scraped.
    let up = wait_for(Duration::from_secs(20), || async move {
        let up = api.query("up == 1").await.unwrap_or_default();
        up.len() == 2
    })
    .await;
    assert!(
        up,
        "the server and the load driver were not both up in 20 s\n{}",
        run.logs()
    );

    // Every rule loaded and evaluated without error.
    let mut alert_queries = Vec::new();
    let evaluated = wait_for(Duration::from_secs(10), || async move {
        let Ok(data) = api.call("/api/v1/rules", None).await else {
            return false;
        };
        let rules: Vec<Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        !rules.is_empty()
            && rules
                .iter()
                .all(|r| r["lastEvaluation"] != "0001-01-01T00:00:00Z")
    })
    .await;
    assert!(
        evaluated,
        "the rules were not evaluated in 10 s\n{}",
        run.logs()
    );
    let data = api.call("/api/v1/rules", None).await.unwrap();
    for group in data["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["name"].as_str().unwrap().to_owned();
            assert_eq!(rule["health"], "ok", "rule {name}: {}", rule["lastError"]);
            alert_queries.push((name, rule["query"].as_str().unwrap().to_owned()));
        }
    }
    assert!(
        alert_queries
            .iter()
            .any(|(name, _)| name == "CircuitBreakerOpen"),
        "no CircuitBreakerOpen rule in {alert_queries:?}"
    );

    // The outage: the breaker opens, and the alert fires once it has been open for its `for`.
    let outage_ends = started_at + Duration::from_secs(OUTAGE_AFTER + OUTAGE_FOR);
    let fired = wait_for(
        Duration::from_secs(OUTAGE_AFTER + OUTAGE_FOR),
        || async move {
            api.alert_state("CircuitBreakerOpen")
                .await
                .ok()
                .flatten()
                .as_deref()
                == Some("firing")
        },
    )
    .await;
    let fired_at = started_at.elapsed();
    assert!(
        fired,
        "CircuitBreakerOpen did not fire during the outage\n{}",
        run.logs()
    );
    assert!(
        Instant::now() < outage_ends,
        "CircuitBreakerOpen fired only after the outage ({:.1} s)",
        fired_at.as_secs_f64()
    );
    println!(
        "CircuitBreakerOpen firing {:.1} s after the start (outage from {OUTAGE_AFTER} s)",
        fired_at.as_secs_f64()
    );

    // After the outage the breaker probes, closes, and the alert clears.
    sleep(outage_ends.saturating_duration_since(Instant::now())).await;
    let cleared = wait_for(Duration::from_secs(20), || async move {
        api.alert_state("CircuitBreakerOpen").await.ok() == Some(None)
    })
    .await;
    assert!(
        cleared,
        "CircuitBreakerOpen still active 20 s after the outage\n{}",
        run.logs()
    );
    println!(
        "CircuitBreakerOpen cleared {:.1} s after the start (outage until {} s)",
        started_at.elapsed().as_secs_f64(),
        OUTAGE_AFTER + OUTAGE_FOR
    );

    // A few more scrapes after recovery, then every query over the whole run.
    sleep(Duration::from_secs(3)).await;
    let end = unix_now();
    let mut empty = Vec::new();
    let queries = panel_queries(&dashboard);
    assert!(queries.len() >= 20, "only {} panel queries", queries.len());
    for (title, expr) in &queries {
        match api.query_range(expr, started, end).await {
            Ok(series) if !series.is_empty() => {}
            Ok(_) => empty.push(format!("panel {title:?}: no data for {expr}")),
            Err(e) => empty.push(format!("panel {title:?}: {e} for {expr}")),
        }
    }
    for (name, expr) in &alert_queries {
        if let Err(e) = api.query_range(expr, started, end).await {
            empty.push(format!("alert {name}: {e}"));
        }
        let Some(query) = without_threshold(expr) else {
            empty.push(format!(
                "alert {name}: not `<query> <op> <threshold>`: {expr}"
            ));
            continue;
        };
        match api.query_range(query, started, end).await {
            Ok(series) if !series.is_empty() => {}
            Ok(_) => empty.push(format!("alert {name}: no data for {query}")),
            Err(e) => empty.push(format!("alert {name}: {e} for {query}")),
        }
    }
    println!(
        "{} panel queries and {} alert rules checked over {:.0} s of data",
        queries.len(),
        alert_queries.len(),
        end - started
    );
    assert!(empty.is_empty(), "{}\n{}", empty.join("\n"), run.logs());
    drop(run);
}

#[test]
fn thresholds_are_split_off_alert_expressions() {
    assert_eq!(without_threshold("max(x) > 0"), Some("max(x)"));
    assert_eq!(without_threshold("a / b < 0.95"), Some("a / b"));
    assert_eq!(without_threshold("rate(x[5m])"), None);
}
