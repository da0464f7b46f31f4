//! Where the control plane's log lines (berth-server's `tracing` events) go: stderr, one line
//! per event, its message as written, with no time, level or target added, so that users read
//! what they read when these lines were `eprintln!`s. Other fields, if an event has any, follow
//! as ` name=value`. DEBUG and TRACE events are dropped, and
//! the NATS client's own INFO events. Under `--log-format json` each line is a JSON object
//! instead (`time`, `stream: "berth"`, `level`, `message`), as containers' lines are then.
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use berth_server::supervisor::output::{server_json, Output};
use napi::Error;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Set by `--log-format json`: the control plane's own lines are JSON objects too.
static JSON: AtomicBool = AtomicBool::new(false);

/// `--log-format`'s value (unset: `inherit`, as `berth run` wants), which also sets the format
/// of the control plane's own lines.
pub(crate) fn output(format: Option<&str>) -> napi::Result<Output> {
    let output = Output::parse(format.unwrap_or("inherit")).map_err(Error::from_reason)?;
    if output == Output::Json {
        JSON.store(true, Ordering::Relaxed);
    }
    Ok(output)
}

/// Installs the stderr subscriber for the process, once; later calls do nothing.
pub(crate) fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing::subscriber::set_global_default(Stderr);
    });
}

struct Stderr;

impl Subscriber for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // The NATS client's own INFO lines ("event: connected") repeat berth's (berth-nats logs
        // connects and what went wrong in its words); its warnings and errors still show.
        let level = if metadata.target().starts_with("async_nats") { Level::WARN } else { Level::INFO };
        *metadata.level() <= level
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::INFO)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Spans carry nothing into the lines; every one may share an id.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line::default();
        event.record(&mut line);
        let text = if JSON.load(Ordering::Relaxed) {
            let level = match *event.metadata().level() {
                Level::ERROR => "error",
                Level::WARN => "warn",
                _ => "info",
            };
            server_json(level, &(line.message + &line.fields))
        } else {
            line.message + &line.fields
        };
        // As eprintln! writes, but a closed stderr is no reason to panic.
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            // The message is format_args!, whose Debug is its text.
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}
