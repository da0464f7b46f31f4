//! One container process: how it is started (its output inherited, or relayed by `output`), how
//! its end is described, and the death signals that keep any process from outliving the one
//! that started it.
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};

use super::output::{relay_output, Output};

/// A container process that waits for its identity on stdin.
pub(super) fn start_container_process(command: &[String], app_file: &str, output: Output) -> std::io::Result<Child> {
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
    cmd.stdin(Stdio::piped());
    if output == Output::Inherit {
        return cmd.stdout(inherited(std::io::stdout().as_fd())).stderr(inherited(std::io::stderr().as_fd())).spawn();
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    relay_output(&mut child, output);
    Ok(child)
}

/// Node marks fds 0-2 close-on-exec at startup (uv_disable_stdio_inheritance), so a plain
/// "inherit" would start containers with no stdout: pass duplicates, which the child gets
/// as its own fds 1 and 2.
fn inherited(fd: std::os::fd::BorrowedFd<'_>) -> Stdio {
    fd.try_clone_to_owned().map_or_else(|_| Stdio::inherit(), Stdio::from)
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
