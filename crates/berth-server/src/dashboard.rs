//! `/dashboard` on the HTTP port (README "Dashboard"): one static page (dashboard.html, no
//! build step) that draws what the server counts, live. `/dashboard/events` streams it as
//! Server-Sent Events, one round a second: `event: metrics` (the `/metrics` exposition, one
//! `data:` line per line) and `event: errors` (the last failed inputs, JSON, newest last).
//!
//! The server keeps nothing per viewer: the page keeps the minutes it charts, and the server's
//! own state is bounded (the errors are a ring of `plane::RECENT_ERRORS`). A stream ends when
//! its viewer goes away or the server stops.
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;
use serde_json::json;
use tokio::sync::watch;

use crate::conn::Counters;
use crate::http::Chunks;
use crate::plane::Shared;

/// The page.
pub(crate) const PAGE: &str = include_str!("dashboard.html");

/// How often the stream sends a round: a second, or `BERTH_DASHBOARD_EVERY_MS` (for tests: an
/// hour of rounds in seconds).
fn every() -> Duration {
    std::env::var("BERTH_DASHBOARD_EVERY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(Duration::from_secs(1), Duration::from_millis)
}

/// The event stream: a round at once, then one every [`every`], until `closing` turns true.
pub(crate) fn events(shared: Arc<Shared>, counters: Arc<Counters>, closing: watch::Receiver<bool>) -> Chunks {
    let every = every();
    let state = (shared, counters, closing, true);
    Box::pin(futures_util::stream::unfold(state, move |(shared, counters, mut closing, first)| async move {
        if *closing.borrow() {
            return None;
        }
        if !first {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = closing.wait_for(|c| *c) => return None,
            }
        }
        let round = round(&shared, &counters).await?;
        Some((Ok(Bytes::from(round)), (shared, counters, closing, false)))
    }))
}

/// One round of events; `None` once the scheduler has stopped.
async fn round(shared: &Shared, counters: &Counters) -> Option<String> {
    let text = crate::metrics::exposition(shared, counters.snapshot()).await.ok()?;
    let mut out = String::with_capacity(text.len() + text.lines().count() * 6 + 64);
    out.push_str("event: metrics\n");
    for line in text.lines() {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    let errors: Vec<_> = shared
        .lock()
        .recent_errors
        .iter()
        .map(|e| {
            json!({ "at": e.at_ms, "app": e.app, "function": e.function, "name": e.name, "message": e.message, "stack": e.stack })
        })
        .collect();
    out.push_str("event: errors\ndata: ");
    out.push_str(&serde_json::Value::Array(errors).to_string());
    out.push_str("\n\n");
    Some(out)
}
