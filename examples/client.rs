//! A command-line HTTP client with the whole tower-lifeline client stack.
//!
//! ```text
//! cargo run --example client -- URL [--method M] [--data BODY] [--timeout SECS] [--priority P]
//!     [--strategy single|sequential|parallel] [--attempts N] [--service-name NAME]
//! ```
//!
//! Prints the status line, the body and how many attempts were made. Exits 0 on a 2xx, 1 on
//! another status, 2 on a transport failure, a body cut short or an exceeded deadline (with a
//! one-line reason), 64 on bad arguments (a URL that does not parse among them).

use std::process::ExitCode;
use std::time::Duration;

use http::Method;
use tower_lifeline::client::{Client, InvalidRequest};
use tower_lifeline::deadline::DeadlineExceeded;
use tower_lifeline::error::find_source;
use tower_lifeline::strategy::{Delays, Strategy};
use tower_lifeline::Priority;

const HELP: &str = "\
client: an HTTP client with deadline, priority, strategies and budget

USAGE: cargo run --example client -- URL [OPTIONS]

OPTIONS:
    --method M             HTTP method (default GET)
    --data BODY            request body
    --timeout SECS         deadline in seconds (default 20)
    --priority P           high | normal | low (default normal)
    --strategy S           single | sequential | parallel (default: by method)
    --attempts N           attempts for sequential and parallel (default 3)
    --service-name NAME    sent as X-Service-Name
    -h, --help             print this help

By method, a POST or PATCH is sent once unless it has an Idempotency-Key; --strategy is
the caller's word for this request and is honoured for any method. A request that never
reached the server (connection refused) is sent again, up to three times, for any method.

EXIT STATUS:
    0    a 2xx answer, its body read whole
    1    an answer that is not 2xx
    2    no answer: deadline exceeded, connection failed, a body cut short
    64   bad arguments, a URL that does not parse";

struct Args {
    url: String,
    method: Method,
    data: Option<String>,
    timeout: Duration,
    priority: Priority,
    strategy: Option<String>,
    attempts: u32,
    service_name: Option<String>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut parsed = Args {
        url: String::new(),
        method: Method::GET,
        data: None,
        timeout: Duration::from_secs(20),
        priority: Priority::Normal,
        strategy: None,
        attempts: 3,
        service_name: None,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--method" => {
                let m = value("--method")?;
                parsed.method = Method::from_bytes(m.to_uppercase().as_bytes())
                    .map_err(|_| format!("bad method {m:?}"))?;
            }
            "--data" => parsed.data = Some(value("--data")?),
            "--timeout" => {
                let secs: f64 = value("--timeout")?
                    .parse()
                    .map_err(|_| "--timeout needs seconds")?;
                parsed.timeout = Duration::try_from_secs_f64(secs)
                    .map_err(|_| "--timeout must be a positive number")?;
            }
            "--priority" => {
                parsed.priority = value("--priority")?.parse().map_err(|e| format!("{e}"))?
            }
            "--strategy" => {
                let s = value("--strategy")?;
                if !matches!(s.as_str(), "single" | "sequential" | "parallel") {
                    return Err(format!("unknown strategy {s:?}"));
                }
                parsed.strategy = Some(s);
            }
            "--attempts" => {
                parsed.attempts = value("--attempts")?
                    .parse()
                    .map_err(|_| "--attempts needs a number")?;
            }
            "--service-name" => parsed.service_name = Some(value("--service-name")?),
            url if !url.starts_with('-') && parsed.url.is_empty() => parsed.url = url.to_owned(),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    if parsed.url.is_empty() {
        return Err("a URL is required".into());
    }
    Ok(Some(parsed))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(reason) => {
            eprintln!("error: {reason}\n\n{HELP}");
            return ExitCode::from(64);
        }
    };

    let mut builder = Client::builder();
    if let Some(name) = &args.service_name {
        builder = builder.service_name(name);
    }
    let client = match builder.build() {
        Ok(client) => client,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(64);
        }
    };

    let mut request = client
        .request(args.method.clone(), &args.url)
        .timeout(args.timeout)
        .priority(args.priority);
    if let Some(data) = args.data {
        request = request.body(data);
    }
    // aio-request's linear_backoff_delays(): 0 + k * 50 ms, ±20%.
    let backoff = Delays::linear(Duration::ZERO, Duration::from_millis(50));
    request = match args.strategy.as_deref() {
        Some("single") => request.strategy(Strategy::single()),
        Some("sequential") => request.strategy(Strategy::sequential(args.attempts, backoff)),
        Some("parallel") => request.strategy(Strategy::parallel(
            args.attempts,
            Delays::constant(Duration::from_millis(100)),
        )),
        _ => request,
    };

    match request.send().await {
        Ok(response) => {
            let status = response.status();
            let attempts = response.attempts();
            println!(
                "HTTP {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            );
            // The body was read inside the attempt; a body cut short already failed the call.
            match response.text().await {
                Ok(body) => println!("{body}"),
                Err(err) => {
                    eprintln!("body unreadable: {err}");
                    return ExitCode::from(2);
                }
            }
            eprintln!("attempts: {attempts}");
            if status.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(err) => {
            // A URL that does not parse is a bad argument too.
            if find_source::<InvalidRequest>(err.as_ref()).is_some() {
                eprintln!("error: {err}\n\n{HELP}");
                return ExitCode::from(64);
            }
            // The crate's errors display their causes on one line.
            let reason = match find_source::<DeadlineExceeded>(err.as_ref()) {
                Some(exceeded) => format!("deadline exceeded: {exceeded}"),
                None => format!("request failed: {err}"),
            };
            eprintln!("{reason}");
            ExitCode::from(2)
        }
    }
}
