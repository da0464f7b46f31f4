//! What container processes print, under `berth serve` and `berth worker` (README
//! "Observability"): each line of a container's stdout and stderr reaches the server's own
//! stdout or stderr whole, named by app, function and container — as text behind
//! `app/function#3 | `, or as one JSON object per line (`--log-format json`) — and is kept in a
//! bounded ring of recent lines ([`LogBook`]) that `berth logs` reads. `berth run` passes the
//! containers its own stdout and stderr instead ([`Output::Inherit`]): its output is the job's.
//!
//! A container process that was told to tag its lines (`BERTH_LOG_TAGS=1`, src/run/log-tags.ts)
//! starts each line with `\x1e<level><input id>\x1f`: the level (`d`, `i`, `w`, `e`: the console
//! method that printed it) and the input it was printed in, if any. The relay reads and strips
//! the tag; an untagged line is `info` on stdout and `error` on stderr.
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where container processes' stdout and stderr go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// The server's own stdout and stderr, as they are (`berth run`: the job's output).
    #[default]
    Inherit,
    /// Line by line behind `app/function#container | ` (`berth serve`, `berth worker`).
    Text,
    /// One JSON object per line (`--log-format json`).
    Json,
}

impl Output {
    /// `--log-format`'s value, or `inherit`; an unknown one is an error naming the known ones.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            "inherit" => Ok(Self::Inherit),
            other => Err(format!("--log-format {other}: not a log format; use text (the default) or json")),
        }
    }
}

/// A line of a container's output longer than this is cut: what follows, up to its newline,
/// is dropped (a process printing megabytes without a newline must not grow the server).
pub const MAX_LINE: usize = 64 * 1024;

/// How long a line's tag may be (`\x1e<level><input id>\x1f`).
const TAG_MAX: usize = 256;

/// The ring's bounds: at most this many lines, and this many bytes of them.
const BOOK_LINES: usize = 10_000;
const BOOK_BYTES: usize = 8 * 1024 * 1024;

/// Which stream a line came from; `Berth` is the server's own line about a container (its
/// start, stop, crash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    Berth,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Berth => "berth",
        }
    }
}

/// Who a container process is, once it knows (a warm spare does not yet: empty names).
#[derive(Clone, Debug, Default)]
pub struct Label {
    pub app: Arc<str>,
    pub function: Arc<str>,
    pub container: Option<u32>,
}

/// One line of a container's output, or the server's line about a container.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub time: SystemTime,
    pub label: Label,
    pub stream: Stream,
    pub level: &'static str,
    /// The input the line was printed in, if any.
    pub input: Option<String>,
    pub message: String,
}

impl LogLine {
    /// `app/function#3 | message` (`berth container | message` for a spare not yet named).
    pub fn text(&self) -> String {
        let l = &self.label;
        let mut out = match l.container {
            Some(c) => format!("{}/{}#{c} | ", l.app, l.function),
            None => "berth container | ".to_string(),
        };
        out.push_str(&self.message);
        out
    }

    /// `{"time":…,"app":…,"function":…,"container":3,"stream":"stdout","level":"info",
    /// "input":"in-7","message":…}`; `input` only for a line printed inside an input.
    pub fn json(&self) -> String {
        let mut o = serde_json::Map::new();
        o.insert("time".into(), rfc3339(self.time).into());
        o.insert("app".into(), (*self.label.app).into());
        o.insert("function".into(), (*self.label.function).into());
        o.insert("container".into(), self.label.container.map_or(serde_json::Value::Null, Into::into));
        o.insert("stream".into(), self.stream.as_str().into());
        o.insert("level".into(), self.level.into());
        if let Some(input) = &self.input {
            o.insert("input".into(), input.as_str().into());
        }
        o.insert("message".into(), self.message.as_str().into());
        serde_json::Value::Object(o).to_string()
    }

    pub fn format(&self, output: Output) -> String {
        if output == Output::Json {
            self.json()
        } else {
            self.text()
        }
    }
}

/// A line of the server's own that names no container, under `--log-format json`:
/// `{"time":…,"stream":"berth","level":…,"message":…}`.
pub fn server_json(level: &str, message: &str) -> String {
    let mut o = serde_json::Map::new();
    o.insert("time".into(), rfc3339(SystemTime::now()).into());
    o.insert("stream".into(), "berth".into());
    o.insert("level".into(), level.into());
    o.insert("message".into(), message.into());
    serde_json::Value::Object(o).to_string()
}

/// `2026-11-30T13:39:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The recent lines of every container of this process's server, bounded ([`BOOK_LINES`],
/// [`BOOK_BYTES`]), and a feed of the lines to come (`berth logs -f`).
pub struct LogBook {
    ring: Mutex<(VecDeque<Arc<LogLine>>, usize)>,
    feed: tokio::sync::broadcast::Sender<Arc<LogLine>>,
}

impl LogBook {
    fn new() -> Self {
        Self { ring: Mutex::new((VecDeque::new(), 0)), feed: tokio::sync::broadcast::channel(4096).0 }
    }

    pub fn push(&self, line: LogLine) {
        let line = Arc::new(line);
        {
            let mut g = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            let (lines, bytes) = &mut *g;
            *bytes += line.message.len();
            lines.push_back(line.clone());
            while lines.len() > BOOK_LINES || *bytes > BOOK_BYTES {
                let Some(old) = lines.pop_front() else { break };
                *bytes -= old.message.len();
            }
        }
        // Nobody following is no error.
        let _ = self.feed.send(line);
    }

    /// The last `n` lines of app `app`'s containers (every app's when `None`), oldest first.
    pub fn recent(&self, app: Option<&str>, n: usize) -> Vec<Arc<LogLine>> {
        let g = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> =
            g.0.iter().rev().filter(|l| app.is_none_or(|a| &*l.label.app == a)).take(n).cloned().collect();
        out.reverse();
        out
    }

    /// The lines pushed from now on (a follower that falls more than 4096 lines behind misses some).
    pub fn follow(&self) -> tokio::sync::broadcast::Receiver<Arc<LogLine>> {
        self.feed.subscribe()
    }
}

/// This process's [`LogBook`]: one server per process.
pub fn log_book() -> &'static LogBook {
    static BOOK: OnceLock<LogBook> = OnceLock::new();
    BOOK.get_or_init(LogBook::new)
}

/// Writes `line` to this process's stdout (a container's stdout) or stderr (the rest) in the
/// format `output` says, and keeps it in the [`LogBook`].
pub fn emit(line: LogLine, output: Output) {
    let mut text = line.format(output).into_bytes();
    text.push(b'\n');
    // As println! writes, but a closed stdout is no reason to panic.
    let _ = if line.stream == Stream::Stdout {
        std::io::stdout().lock().write_all(&text)
    } else {
        std::io::stderr().lock().write_all(&text)
    };
    log_book().push(line);
}

/// Each relayed process's label, by process id, so that [`name_output`] can name a spare
/// once it becomes a container.
type Labels = HashMap<u32, Arc<Mutex<Label>>>;
static LABELS: Mutex<Option<Labels>> = Mutex::new(None);

fn labels() -> MutexGuard<'static, Option<Labels>> {
    LABELS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Names the output of process `pid` from now on.
pub(super) fn name_output(pid: u32, label: Label) {
    if let Some(l) = labels().get_or_insert_with(HashMap::new).get(&pid) {
        *l.lock().unwrap_or_else(|e| e.into_inner()) = label;
    }
}

/// The level an untagged line of `stream` gets.
fn default_level(stream: Stream) -> &'static str {
    if stream == Stream::Stderr {
        "error"
    } else {
        "info"
    }
}

/// A line as the container wrote it: its tag (`\x1e<level><input>\x1f`) read and stripped.
fn untag(line: &[u8], stream: Stream) -> (&'static str, Option<String>, &[u8]) {
    if line.first() == Some(&0x1e) {
        if let Some(end) = line.iter().take(TAG_MAX).position(|b| *b == 0x1f) {
            let level = match line.get(1) {
                Some(b'd') => "debug",
                Some(b'i') => "info",
                Some(b'w') => "warn",
                Some(b'e') => "error",
                _ => default_level(stream),
            };
            let input = line.get(2..end).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned());
            return (level, input, &line[end + 1..]);
        }
    }
    (default_level(stream), None, line)
}

/// Reads `from` a line at a time until it closes, handing each to `to` whole (a last line
/// without a newline too); a line past [`MAX_LINE`] is cut there, with a note saying so, and
/// the rest of it, up to its newline, dropped.
pub fn relay_lines(from: impl Read, stream: Stream, label: &Mutex<Label>, mut to: impl FnMut(LogLine)) {
    let mut from = BufReader::with_capacity(16 * 1024, from);
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut cut = false;
    let mut done = |line: &[u8], cut: bool| {
        let (level, input, mut text) = untag(line, stream);
        // The cap is the line's as printed, its tag not counted.
        let cut = cut || text.len() > MAX_LINE;
        text = &text[..text.len().min(MAX_LINE)];
        let mut message = String::from_utf8_lossy(text).into_owned();
        if cut {
            message.push_str(&format!(" [berth: line cut at {MAX_LINE} bytes]"));
        }
        let label = label.lock().unwrap_or_else(|e| e.into_inner()).clone();
        to(LogLine { time: SystemTime::now(), label, stream, level, input, message });
    };
    loop {
        let (used, newline) = match from.fill_buf() {
            Ok([]) | Err(_) => break,
            Ok(buf) => {
                let end = buf.iter().position(|b| *b == b'\n');
                let take = end.unwrap_or(buf.len());
                if !cut {
                    let room = (MAX_LINE + TAG_MAX).saturating_sub(line.len());
                    line.extend_from_slice(&buf[..take.min(room)]);
                    cut = take > room;
                }
                (end.map_or(buf.len(), |i| i + 1), end.is_some())
            }
        };
        from.consume(used);
        if newline {
            done(&line, cut);
            line.clear();
            cut = false;
        }
    }
    if !line.is_empty() || cut {
        done(&line, cut);
    }
}

/// Relays a child's piped stdout and stderr ([`Output::Text`], [`Output::Json`]) on a thread
/// each, named by [`name_output`] once the process knows who it is.
pub(super) fn relay_output(child: &mut Child, output: Output) {
    let label = Arc::new(Mutex::new(Label::default()));
    let pid = child.id();
    labels().get_or_insert_with(HashMap::new).insert(pid, label.clone());
    let stdout = child.stdout.take().map(|pipe| {
        let label = label.clone();
        std::thread::Builder::new().name("berth-output".into()).spawn(move || {
            relay_lines(pipe, Stream::Stdout, &label, |l| emit(l, output));
        })
    });
    let stderr = child.stderr.take();
    // Stderr's thread, which ends after stdout's, forgets the label (pids are reused).
    let _ = std::thread::Builder::new().name("berth-output".into()).spawn(move || {
        if let Some(pipe) = stderr {
            relay_lines(pipe, Stream::Stderr, &label, |l| emit(l, output));
        }
        if let Some(Ok(t)) = stdout {
            let _ = t.join();
        }
        labels().get_or_insert_with(HashMap::new).remove(&pid);
    });
}

/// The server's own line about a container (`stream: berth`): printed as `output` says (on
/// stderr) and kept with its output. Under [`Output::Inherit`] only `warn` lines are printed,
/// as they were before (`berth run` prints no container's start or stop).
pub(super) fn lifecycle(
    output: Output,
    app: &str,
    function: &str,
    container: u32,
    level: &'static str,
    message: String,
) {
    let line = LogLine {
        time: SystemTime::now(),
        label: Label { app: app.into(), function: function.into(), container: Some(container) },
        stream: Stream::Berth,
        level,
        input: None,
        message,
    };
    match output {
        Output::Inherit if level == "warn" || level == "error" => {
            let _ = writeln!(std::io::stderr().lock(), "{}", line.message);
            log_book().push(line);
        }
        Output::Inherit => log_book().push(line),
        Output::Text => {
            // The server's own lines read as they always did: `berth: container 3 of app/f …`.
            let _ = writeln!(std::io::stderr().lock(), "{}", line.message);
            log_book().push(line);
        }
        Output::Json => emit(line, output),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relayed(input: &[u8], stream: Stream) -> Vec<LogLine> {
        let label = Mutex::new(Label { app: "a".into(), function: "f".into(), container: Some(1) });
        let mut out = Vec::new();
        relay_lines(input, stream, &label, |l| out.push(l));
        out
    }

    #[test]
    fn each_line_is_handed_over_whole_behind_its_label_and_a_last_line_without_newline_too() {
        let out: Vec<String> = relayed(b"one\ntwo\n\nthree", Stream::Stdout).iter().map(LogLine::text).collect();
        assert_eq!(out, ["a/f#1 | one", "a/f#1 | two", "a/f#1 | ", "a/f#1 | three"]);
    }

    #[test]
    fn a_line_past_the_cap_is_cut_and_the_next_one_is_whole() {
        // 10 MB without a newline, then one more line.
        let mut input = b"\x1eiin-1\x1f".to_vec();
        input.resize(10 * 1024 * 1024, b'x');
        input.extend_from_slice(b"\nnext\n");
        let out = relayed(&input, Stream::Stdout);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].message, format!("{} [berth: line cut at {MAX_LINE} bytes]", "x".repeat(MAX_LINE)));
        assert_eq!(out[1].message, "next");
    }

    #[test]
    fn a_tag_gives_the_level_and_input_and_is_stripped_untagged_lines_take_their_streams_level() {
        let out = relayed(b"\x1ewin-7\x1fcareful\nplain\n\x1ed\x1fdebugging\n", Stream::Stderr);
        assert_eq!((out[0].level, out[0].input.as_deref(), out[0].message.as_str()), ("warn", Some("in-7"), "careful"));
        assert_eq!((out[1].level, out[1].input.as_deref(), out[1].message.as_str()), ("error", None, "plain"));
        assert_eq!((out[2].level, out[2].input.as_deref(), out[2].message.as_str()), ("debug", None, "debugging"));
        let json: serde_json::Value = serde_json::from_str(&out[0].json()).unwrap();
        assert_eq!(json["app"], "a");
        assert_eq!(json["function"], "f");
        assert_eq!(json["container"], 1);
        assert_eq!(json["stream"], "stderr");
        assert_eq!(json["level"], "warn");
        assert_eq!(json["input"], "in-7");
        assert_eq!(json["message"], "careful");
        assert!(json["time"].as_str().unwrap().ends_with('Z'));
        assert!(serde_json::from_str::<serde_json::Value>(&out[1].json()).unwrap().get("input").is_none());
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + std::time::Duration::from_millis(1_772_890_123_456)),
            "2026-03-07T13:28:43.456Z"
        );
    }

    #[test]
    fn the_book_keeps_the_last_lines_per_app() {
        let book = LogBook::new();
        for i in 0..BOOK_LINES + 5 {
            let app = if i % 2 == 0 { "even" } else { "odd" };
            book.push(LogLine {
                time: SystemTime::now(),
                label: Label { app: app.into(), function: "f".into(), container: Some(1) },
                stream: Stream::Stdout,
                level: "info",
                input: None,
                message: i.to_string(),
            });
        }
        let odd = book.recent(Some("odd"), 2);
        assert_eq!(odd.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(), ["10001", "10003"]);
        assert_eq!(book.recent(None, usize::MAX).len(), BOOK_LINES);
    }
}
