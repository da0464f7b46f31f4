//! One container process: how it is started, how its output reaches the server's (each line
//! prefixed with the container's name), how its end is described, and the death signals that
//! keep any process from outliving the one that started it.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

/// A line of a container's output longer than this is cut: what follows, up to its newline,
/// is dropped (a process printing megabytes without a newline must not grow the server).
pub(super) const MAX_LINE: usize = 64 * 1024;

/// The prefix each live container's output lines get, by process id: `app/function#3 | `
/// once the container knows who it is, `berth container | ` before (a warm spare).
static PREFIXES: Mutex<Option<HashMap<u32, Arc<Mutex<String>>>>> = Mutex::new(None);

fn prefixes() -> std::sync::MutexGuard<'static, Option<HashMap<u32, Arc<Mutex<String>>>>> {
    PREFIXES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Names the output of process `pid` from now on (`label` is `app/function#id`).
pub(super) fn name_output(pid: u32, label: &str) {
    if let Some(prefix) = prefixes().get_or_insert_with(HashMap::new).get(&pid) {
        *prefix.lock().unwrap_or_else(|e| e.into_inner()) = format!("{label} | ");
    }
}

/// Copies `from` to `to` a line at a time, each written whole behind the process's current
/// prefix, lines past [`MAX_LINE`] cut (with a note saying so); until `from` closes.
pub(super) fn relay_lines(from: impl Read, mut to: impl FnMut(&[u8]), prefix: &Mutex<String>) {
    let mut from = BufReader::with_capacity(16 * 1024, from);
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut cut = false;
    loop {
        let (used, newline) = match from.fill_buf() {
            Ok([]) | Err(_) => break,
            Ok(buf) => match buf.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    if !cut {
                        let room = MAX_LINE.saturating_sub(line.len());
                        line.extend_from_slice(&buf[..i.min(room)]);
                        cut = i > room;
                    }
                    (i + 1, true)
                }
                None => {
                    if !cut {
                        let room = MAX_LINE.saturating_sub(line.len());
                        line.extend_from_slice(&buf[..buf.len().min(room)]);
                        cut = buf.len() > room;
                    }
                    (buf.len(), false)
                }
            },
        };
        from.consume(used);
        if newline {
            emit(&mut to, prefix, &line, cut);
            line.clear();
            cut = false;
        }
    }
    if !line.is_empty() || cut {
        emit(&mut to, prefix, &line, cut);
    }
}

fn emit(to: &mut impl FnMut(&[u8]), prefix: &Mutex<String>, line: &[u8], cut: bool) {
    let mut out = prefix.lock().unwrap_or_else(|e| e.into_inner()).clone().into_bytes();
    out.extend_from_slice(line);
    if cut {
        out.extend_from_slice(format!(" [berth: line cut at {MAX_LINE} bytes]").as_bytes());
    }
    out.push(b'\n');
    to(&out);
}

/// Relays a child's stdout and stderr to this process's, on a thread each, named by
/// [`name_output`] once known.
fn relay_output(child: &mut Child) {
    let prefix = Arc::new(Mutex::new("berth container | ".to_string()));
    let pid = child.id();
    prefixes().get_or_insert_with(HashMap::new).insert(pid, prefix.clone());
    let stdout = child.stdout.take().map(|pipe| {
        let prefix = prefix.clone();
        std::thread::Builder::new().name("berth-output".into()).spawn(move || {
            relay_lines(pipe, |b| drop(std::io::stdout().lock().write_all(b)), &prefix);
        })
    });
    let stderr = child.stderr.take();
    // Stderr's thread, which ends after stdout's, forgets the prefix (pids are reused).
    let _ = std::thread::Builder::new().name("berth-output".into()).spawn(move || {
        if let Some(pipe) = stderr {
            relay_lines(pipe, |b| drop(std::io::stderr().lock().write_all(b)), &prefix);
        }
        if let Some(Ok(t)) = stdout {
            let _ = t.join();
        }
        prefixes().get_or_insert_with(HashMap::new).remove(&pid);
    });
}

/// A container process that waits for its identity on stdin.
pub(super) fn start_container_process(command: &[String], app_file: &str) -> std::io::Result<Child> {
    let Some((program, args)) = command.split_first() else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no container command"));
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("BERTH_APP_FILE", app_file)
        // A group of its own: the terminal's Ctrl-C goes to the serving process alone, which
        // stops containers in order instead of every process draining at once.
        .process_group(0);
    // A container ends with its server, however the server ends (SIGKILL included): the
    // kernel kills it when the thread that started it goes, and those threads (the JS thread,
    // the server runtime's workers) live until the server process ends. A server stopping in
    // order has stopped its containers before then.
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec here.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    relay_output(&mut child);
    Ok(child)
}

pub(super) fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended".to_string(),
    }
}

/// Makes this process get SIGTERM when its parent goes away (Linux): `npx berth serve` under a
/// process manager gets SIGTERM in npm, whose `sh -c` child dies without passing it on, which
/// would leave `berth serve` and its containers running with nobody to stop them. The SIGTERM
/// handler then drains as for any SIGTERM. Returns false where this is not available (the
/// caller watches `process.ppid` instead).
/// `parent` is the parent's pid as this process saw it at its start.
pub fn watch_parent(parent: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on this process.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return false;
            }
            // The parent may have gone before the call: then nobody would signal us. (Not a
            // test for pid 1: under systemd, or an init in a container, that is the parent.)
            if libc::getppid() as u32 != parent {
                libc::kill(libc::getpid(), libc::SIGTERM);
            }
        }
        true
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = parent;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relayed(input: &[u8], prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        relay_lines(input, |b| out.push(String::from_utf8_lossy(b).into_owned()), &Mutex::new(prefix.into()));
        out
    }

    #[test]
    fn each_line_is_written_whole_behind_the_prefix_and_a_last_line_without_newline_too() {
        assert_eq!(
            relayed(b"one\ntwo\n\nthree", "a/f#1 | "),
            ["a/f#1 | one\n", "a/f#1 | two\n", "a/f#1 | \n", "a/f#1 | three\n"]
        );
    }

    #[test]
    fn a_line_past_the_cap_is_cut_and_the_next_one_is_whole() {
        let mut input = vec![b'x'; MAX_LINE * 3];
        input.extend_from_slice(b"\nnext\n");
        let out = relayed(&input, "p | ");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], format!("p | {} [berth: line cut at {MAX_LINE} bytes]\n", "x".repeat(MAX_LINE)));
        assert_eq!(out[1], "p | next\n");
    }
}
