//! The demo's picture: a hand-written SVG, so the demo needs no plotting crate (and CI compiles
//! none). Two charts: latency by percentile per strategy, and the circuit breaker over the
//! outage (calls per 100 ms by outcome, the breaker's state above them).

use std::fmt::Write;

use tower_lifeline::circuit_breaker::CircuitState;

/// The latencies one strategy's callers saw, in milliseconds, sorted.
pub struct Curve {
    pub name: &'static str,
    pub sorted_ms: Vec<f64>,
}

/// How one call of the outage phase ended.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    Succeeded,
    /// The backend answered with an error, or the call timed out.
    Failed,
    /// The open breaker answered at once; the backend never saw it.
    Refused,
}

/// The outage phase, in seconds from its start.
pub struct Timeline {
    /// When the backend went down and came back.
    pub outage: (f64, f64),
    /// When the phase ended.
    pub end: f64,
    /// When each call ended, and how.
    pub calls: Vec<(f64, CallOutcome)>,
    /// Each state change of the breaker (it starts closed).
    pub states: Vec<(f64, CircuitState)>,
}

const WIDTH: f64 = 1000.0;
const COLORS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
const GREEN: &str = "#2ca02c";
const RED: &str = "#d62728";
const GREY: &str = "#9e9e9e";
const AMBER: &str = "#f0b400";

/// A rectangle of the picture where a chart draws, with its axes' ranges.
struct Plot {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
}

impl Plot {
    fn x(&self, fraction: f64) -> f64 {
        self.left + fraction.clamp(0.0, 1.0) * self.width
    }
    fn y(&self, fraction: f64) -> f64 {
        self.top + (1.0 - fraction.clamp(0.0, 1.0)) * self.height
    }
}

/// The SVG document.
pub fn render(curves: &[Curve], timeline: &Timeline, title: &str) -> String {
    let mut svg = String::new();
    let height = 800.0;
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/><text x="20" y="28" font-size="16" font-weight="bold">{}</text>"##,
        escape(title)
    );
    latency_chart(&mut svg, curves);
    breaker_chart(&mut svg, timeline);
    svg.push_str("</svg>\n");
    svg
}

/// Latency against percentile on a "nines" axis (50, 90, 99, 99.9 evenly spaced), log latency.
fn latency_chart(svg: &mut String, curves: &[Curve]) {
    let plot = Plot {
        left: 70.0,
        top: 70.0,
        width: 620.0,
        height: 300.0,
    };
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="56" font-size="14">Latency by percentile, per strategy (callers with a 2 s deadline)</text>"#,
        plot.left
    );
    // x: log10(1 / (1 - p)), from p = 0 to p = 99.9%.
    let nines_max = 3.0;
    let max_ms = curves
        .iter()
        .filter_map(|c| c.sorted_ms.last().copied())
        .fold(10.0_f64, f64::max);
    let (log_min, log_max) = (0.0_f64, max_ms.log10().ceil().max(1.0));
    let y_of = |ms: f64| (ms.max(1.0).log10() - log_min) / (log_max - log_min);
    let _ = writeln!(svg, r#"<g id="latency" stroke-width="1">"#);
    // Grid and ticks.
    for (label, nines) in [
        ("p0", 0.0),
        ("p50", 2f64.log10()),
        ("p90", 1.0),
        ("p99", 2.0),
        ("p99.9", 3.0),
    ] {
        let x = plot.x(nines / nines_max);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#e0e0e0"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            plot.top,
            plot.top + plot.height,
            plot.top + plot.height + 16.0
        );
    }
    let mut decade = 1.0;
    while decade <= 10f64.powf(log_max) {
        for step in [1.0, 2.0, 5.0] {
            let ms = decade * step;
            if ms > 10f64.powf(log_max) {
                break;
            }
            let y = plot.y(y_of(ms));
            let _ = writeln!(
                svg,
                r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{ms} ms</text>"##,
                plot.left,
                plot.left + plot.width,
                plot.left - 6.0,
                y + 4.0
            );
        }
        decade *= 10.0;
    }
    axes(svg, &plot);
    for (i, curve) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let n = curve.sorted_ms.len();
        if n == 0 {
            continue;
        }
        let mut points = String::new();
        // 400 points along the x axis; each the latency at that percentile (nearest rank).
        for step in 0..=400 {
            let nines = nines_max * step as f64 / 400.0;
            let p = 1.0 - 10f64.powf(-nines);
            let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
            let ms = curve.sorted_ms[rank - 1];
            let _ = write!(
                points,
                "{:.1},{:.1} ",
                plot.x(nines / nines_max),
                plot.y(y_of(ms))
            );
        }
        let _ = writeln!(
            svg,
            r#"<polyline id="curve-{}" fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            escape(curve.name),
            points.trim_end()
        );
        let p99 = curve.sorted_ms[((0.99 * n as f64).ceil() as usize).clamp(1, n) - 1];
        let y = plot.top + 10.0 + 22.0 * i as f64;
        let x = plot.left + plot.width + 20.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{} (p99 {p99:.0} ms)</text>"#,
            x + 20.0,
            x + 26.0,
            y + 4.0,
            escape(curve.name)
        );
    }
    let _ = writeln!(svg, "</g>");
}

/// Calls per 100 ms by outcome, stacked, under a strip of the breaker's state.
fn breaker_chart(svg: &mut String, timeline: &Timeline) {
    let plot = Plot {
        left: 70.0,
        top: 500.0,
        width: 620.0,
        height: 240.0,
    };
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="14">Circuit breaker during a {:.0} s backend outage: calls per 100 ms and the breaker's state</text>"#,
        plot.left,
        plot.top - 64.0,
        timeline.outage.1 - timeline.outage.0
    );
    let end = timeline.end.max(0.1);
    let bucket = 0.1;
    let buckets = (end / bucket).ceil() as usize;
    let mut counts = vec![[0u32; 3]; buckets];
    for &(t, outcome) in &timeline.calls {
        let i = ((t / bucket) as usize).min(buckets - 1);
        let k = match outcome {
            CallOutcome::Succeeded => 0,
            CallOutcome::Failed => 1,
            CallOutcome::Refused => 2,
        };
        counts[i][k] += 1;
    }
    let max = counts
        .iter()
        .map(|c| c.iter().sum::<u32>())
        .max()
        .unwrap_or(1)
        .max(1);
    // A round top for the y axis: 10, 20, 50, 100, ...
    let top = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
        .into_iter()
        .find(|&t| t >= max)
        .unwrap_or(max);
    let _ = writeln!(svg, r#"<g id="breaker">"#);
    // The outage window.
    let (from, to) = (
        plot.x(timeline.outage.0 / end),
        plot.x(timeline.outage.1 / end),
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{from:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#fde0dc"/><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#b71c1c">backend down</text>"##,
        plot.top,
        to - from,
        plot.height,
        (from + to) / 2.0,
        plot.top + 14.0
    );
    for tick in 0..=5 {
        let value = top as f64 * tick as f64 / 5.0;
        let y = plot.y(tick as f64 / 5.0);
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{value:.0}</text>"##,
            plot.left,
            plot.left + plot.width,
            plot.left - 6.0,
            y + 4.0
        );
    }
    // About ten ticks: every 0.5 s for a phase of a few seconds, whole seconds beyond.
    let step = 0.5_f64.max((end / 10.0).round());
    let decimals = if step.fract() == 0.0 { 0 } else { 1 };
    let mut second = 0.0;
    while second <= end {
        let x = plot.x(second / end);
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{second:.decimals$} s</text>"#,
            plot.top + plot.height + 16.0
        );
        second += step;
    }
    let bar = plot.width / buckets as f64;
    for (i, count) in counts.iter().enumerate() {
        let mut base = 0u32;
        for (k, color) in [GREEN, RED, GREY].into_iter().enumerate() {
            if count[k] == 0 {
                continue;
            }
            let y_top = plot.y((base + count[k]) as f64 / top as f64);
            let y_bottom = plot.y(base as f64 / top as f64);
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{y_top:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
                plot.left + bar * i as f64,
                (bar - 0.5).max(0.5),
                y_bottom - y_top
            );
            base += count[k];
        }
    }
    // The state strip above the bars.
    let strip_top = plot.top - 34.0;
    let _ = writeln!(
        svg,
        r#"<g id="breaker-state"><text x="{:.1}" y="{:.1}" text-anchor="end">breaker</text>"#,
        plot.left - 6.0,
        strip_top + 11.0
    );
    let mut segments = vec![(0.0, CircuitState::Closed)];
    segments.extend(timeline.states.iter().copied());
    // Half-open stretches last, on top: each is a probe of a millisecond or two, widened below,
    // and the open stretch after it would cover it.
    let mut order: Vec<usize> = (0..segments.len()).collect();
    order.sort_by_key(|&i| segments[i].1 == CircuitState::HalfOpen);
    for i in order {
        let (at, state) = segments[i];
        let until = segments.get(i + 1).map_or(end, |s| s.0);
        let color = match state {
            CircuitState::Closed => GREEN,
            CircuitState::HalfOpen => AMBER,
            CircuitState::Open => RED,
        };
        let (x1, x2) = (plot.x(at / end), plot.x(until / end));
        let min_width = if state == CircuitState::HalfOpen {
            2.5
        } else {
            0.8
        };
        let _ = writeln!(
            svg,
            r#"<rect x="{x1:.1}" y="{strip_top:.1}" width="{:.2}" height="16" fill="{color}"/>"#,
            (x2 - x1).max(min_width)
        );
    }
    let _ = writeln!(svg, "</g>");
    axes(svg, &plot);
    let legend = [
        (GREEN, "succeeded / breaker closed"),
        (RED, "failed at the backend / breaker open"),
        (GREY, "refused at once by the breaker"),
        (AMBER, "breaker half-open (one probe)"),
    ];
    for (i, (color, text)) in legend.into_iter().enumerate() {
        let y = plot.top + 10.0 + 22.0 * i as f64;
        let x = plot.left + plot.width + 20.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{}" width="14" height="14" fill="{color}"/><text x="{}" y="{}">{text}</text>"#,
            y - 7.0,
            x + 20.0,
            y + 4.0
        );
    }
    let _ = writeln!(svg, "</g>");
}

fn axes(svg: &mut String, plot: &Plot) {
    let _ = writeln!(
        svg,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#606060"/>"##,
        plot.left, plot.top, plot.width, plot.height
    );
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
