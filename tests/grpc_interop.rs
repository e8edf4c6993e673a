//! The gRPC example server against Python's `grpcio`, a gRPC client nobody here wrote.
//!
//! Ignored by `cargo test`: it needs a Python with `grpcio`, which `.ci/grpc-interop` installs
//! into a virtual environment of its own (from PyPI) and names in `LIFELINE_GRPC_PYTHON`, then
//! builds `examples/grpc_server` and runs this test. CI runs that script.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

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
        "{} is missing: run `cargo build --example grpc_server` first",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The example server on a free port; killed when dropped.
struct ExampleServer {
    child: Child,
    addr: String,
}

impl ExampleServer {
    async fn start(bare: bool) -> ExampleServer {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(example("grpc_server"));
        command.args(["--addr", &addr]).stdout(Stdio::null());
        if bare {
            command.arg("--bare");
        }
        // Owned at once, so that it is killed whatever happens next.
        let server = ExampleServer {
            child: command.spawn().expect("the example starts"),
            addr,
        };
        // Ready when it accepts connections.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&server.addr).await.is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("examples/grpc_server never listened on {}", server.addr);
    }

    /// One call by Python's grpcio; what it read.
    fn python_call(&self, method: &str, args: &[&str]) -> Value {
        let python = std::env::var("LIFELINE_GRPC_PYTHON")
            .expect("LIFELINE_GRPC_PYTHON: a Python with grpcio (run .ci/grpc-interop)");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/grpc_context_client.py");
        let output = Command::new(python)
            .arg(script)
            .arg(&self.addr)
            .arg(method)
            .args(args)
            .output()
            .expect("python runs");
        assert!(
            output.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("one JSON line")
    }
}

impl Drop for ExampleServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const GET: &str = "/lifeline.example.Context/Get";

#[tokio::test]
#[ignore = "needs Python's grpcio: run .ci/grpc-interop"]
async fn grpcio_reads_the_stack_in_grpc_terms() {
    let server = ExampleServer::start(false).await;

    // grpcio's timeout travels as grpc-timeout; the priority as metadata.
    let seen = server.python_call(
        GET,
        &["--timeout", "2.5", "--metadata", "x-request-priority=high"],
    );
    assert_eq!(seen["code"], "OK", "{seen}");
    let left = seen["reply"]["deadline_ms"].as_u64().expect("a deadline");
    assert!((1_500..=2_500).contains(&left), "{seen}");
    assert_eq!(seen["reply"]["priority"], "high", "{seen}");

    // No timeout: the server's default deadline (20 s).
    let seen = server.python_call(GET, &[]);
    let left = seen["reply"]["deadline_ms"].as_u64().expect("a deadline");
    assert!((15_000..=20_000).contains(&left), "{seen}");

    // A deadline the server cannot meet: refused as DEADLINE_EXCEEDED, which grpcio reads as such
    // (an HTTP 408 would have been UNKNOWN to it).
    let seen = server.python_call(GET, &["--metadata", "x-request-timeout=0.001"]);
    assert_eq!(seen["code"], "DEADLINE_EXCEEDED", "{seen}");
    assert!(
        seen["details"].as_str().unwrap().contains("HTTP 408"),
        "{seen}"
    );

    let seen = server.python_call("/lifeline.example.Context/Invented", &[]);
    assert_eq!(seen["code"], "UNIMPLEMENTED", "{seen}");
}

#[tokio::test]
#[ignore = "needs Python's grpcio: run .ci/grpc-interop"]
async fn grpcio_against_the_bare_server_sees_no_context() {
    let server = ExampleServer::start(true).await;
    let seen = server.python_call(
        GET,
        &["--timeout", "2.5", "--metadata", "x-request-priority=high"],
    );
    assert_eq!(seen["code"], "OK", "{seen}");
    assert_eq!(seen["reply"]["deadline_ms"], Value::Null, "{seen}");
    assert_eq!(seen["reply"]["priority"], "normal", "{seen}");
    // Nothing refuses for want of time without the stack.
    let seen = server.python_call(GET, &["--metadata", "x-request-timeout=0.001"]);
    assert_eq!(seen["code"], "OK", "{seen}");
}
