//! A WebSocket route behind the `Server` preset that closes with 1001 (Going Away) when the
//! server drains, and a drain that waits for it.
//!
//! ```text
//! cargo run --example websocket                           # checks itself and exits
//! cargo run --example websocket -- --serve 127.0.0.1:8080 # serves ws://.../ws until SIGTERM
//! ```
//!
//! An upgraded connection leaves hyper's hands, so hyper's graceful shutdown cannot close it:
//! the handler holds a `Shutdown::guard()`, awaits `Shutdown::triggered()`, says goodbye with
//! close code 1001, and drops the guard; `Server::serve` waits for every guard (within the grace
//! period) before it returns.

use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite;
use tower_lifeline::server::Server;
use tower_lifeline::shutdown::{DrainGuard, Drained, Shutdown};

/// Upgrades to a WebSocket that echoes text until the server drains.
async fn websocket(State(shutdown): State<Shutdown>, upgrade: WebSocketUpgrade) -> Response {
    // Taken before the upgrade, so that a drain starting in between still waits for it.
    let guard = shutdown.guard();
    upgrade.on_upgrade(move |socket| echo_until_drained(socket, shutdown, guard))
}

async fn echo_until_drained(mut socket: WebSocket, shutdown: Shutdown, _guard: DrainGuard) {
    let mut draining = std::pin::pin!(shutdown.triggered());
    loop {
        tokio::select! {
            () = &mut draining => break,
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    if socket.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
    let goodbye = CloseFrame {
        code: close_code::AWAY,
        reason: "server shutting down".into(),
    };
    if socket.send(Message::Close(Some(goodbye))).await.is_err() {
        return;
    }
    // The closing handshake: wait (briefly) for the client's own close frame.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

fn app(shutdown: &Shutdown) -> Router {
    Router::new()
        .route("/ws", get(websocket))
        .with_state(shutdown.clone())
}

#[tokio::main]
async fn main() -> Result<(), tower_lifeline::BoxError> {
    let mut args = std::env::args().skip(1);
    let serve_on = match (args.next().as_deref(), args.next()) {
        (Some("--serve"), Some(addr)) => Some(addr),
        (None, _) => None,
        _ => return Err("usage: websocket [--serve ADDR]".into()),
    };
    let shutdown = Shutdown::new().grace_period(Duration::from_secs(10));
    let server = Server::builder()
        .shutdown(shutdown.clone())
        .build(app(&shutdown))?;
    let addr = serve_on.unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let addr = listener.local_addr()?;
    if serve_on_signals(&shutdown, addr) {
        let drained = server.serve(listener).await?;
        println!("{drained:?}");
        return Ok(());
    }
    let serving = tokio::spawn(server.serve(listener));

    // A client: one echo, then the server drains and says goodbye with 1001.
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await?;
    client.send(tungstenite::Message::text("hello")).await?;
    let echo = client.next().await.ok_or("no echo")??;
    assert_eq!(echo.into_text()?.as_str(), "hello");

    shutdown.trigger();
    let closing = client.next().await.ok_or("no close frame")??;
    let tungstenite::Message::Close(Some(frame)) = closing else {
        return Err(format!("expected a close frame, got {closing:?}").into());
    };
    assert_eq!(u16::from(frame.code), 1001);
    println!(
        "the server said goodbye: {} {:?}",
        u16::from(frame.code),
        frame.reason.as_str()
    );
    // Reading on sends tungstenite's reply to the close frame: the closing handshake the
    // drain waits for.
    while let Some(Ok(_)) = client.next().await {}
    let drained = tokio::time::timeout(Duration::from_secs(5), serving).await???;
    assert_eq!(drained, Drained::Completed);
    println!("drained: {drained:?}");
    Ok(())
}

/// With `--serve`, wires SIGTERM and Ctrl-C and says where to connect; returns whether to serve.
fn serve_on_signals(shutdown: &Shutdown, addr: std::net::SocketAddr) -> bool {
    if addr.port() == 0 || std::env::args().nth(1).as_deref() != Some("--serve") {
        return false;
    }
    shutdown.listen_for_signals();
    println!("ws://{addr}/ws echoes text; SIGTERM closes it with 1001");
    true
}
