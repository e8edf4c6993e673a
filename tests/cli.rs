//! The command-line client (`examples/client.rs`) as a script uses it: its exit status says
//! whether a whole answer came, and its error line says why not. Runs the example's binary,
//! which `cargo test` builds beside the tests, against real servers on loopback.

use std::path::PathBuf;
use std::process::Output;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// `target/<profile>/examples/client`, beside this test's own binary in `target/<profile>/deps`.
fn client_binary() -> PathBuf {
    let test_binary = std::env::current_exe().unwrap();
    let profile_dir = test_binary.parent().unwrap().parent().unwrap();
    let binary = profile_dir.join("examples").join("client");
    // `cargo test` builds the examples before running any test; `cargo test --test cli` does not.
    let hint = "run `cargo test` (or `cargo build --example client` first)";
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} not built: {hint}", binary.display()));
    let source = std::fs::metadata(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/client.rs"))
        .and_then(|m| m.modified())
        .unwrap();
    assert!(
        built >= source,
        "{} older than its source: {hint}",
        binary.display()
    );
    binary
}

async fn run_client(url: &str) -> Output {
    tokio::process::Command::new(client_binary())
        .args([url, "--timeout", "5"])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

/// A server that answers every request on every connection with `response`, then closes.
async fn raw_server(response: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = stream.write_all(response).await;
                // Dropped here: the connection closes, cutting whatever the head promised.
            });
        }
    });
    format!("http://{addr}/")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn a_whole_2xx_answer_exits_0() {
    let url =
        raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").await;
    let output = run_client(&url).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = text(&output.stdout);
    assert!(stdout.starts_with("HTTP 200 OK\nhello"), "{stdout}");
}

#[tokio::test]
async fn a_body_cut_short_exits_2_with_the_reason() {
    // The head promises 100 bytes; 10 come, then the connection closes.
    let url = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b").await;
    let output = run_client(&url).await;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("request failed"), "{stderr}");
    assert!(!text(&output.stdout).contains("only ten b"), "{output:?}");
}

#[tokio::test]
async fn a_refused_connection_exits_2_and_names_the_cause() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let output = run_client(&format!("http://{addr}/")).await;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.to_lowercase().contains("connection refused"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_answer_that_is_not_2xx_exits_1() {
    let url =
        raw_server(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope")
            .await;
    let output = run_client(&url).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
}

#[tokio::test]
async fn bad_arguments_exit_64() {
    let output = run_client("not a url").await;
    assert_eq!(output.status.code(), Some(64), "{output:?}");
}
