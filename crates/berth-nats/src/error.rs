//! One error type; every message says what happened and what to do about it.
use std::fmt;

/// What went wrong, for callers that branch on it (tests, `berth serve --broker`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No NATS server answered at the URL.
    Unreachable,
    /// The server answered but has no JetStream.
    NoJetStream,
    /// A pool's stream or consumer exists with other settings, or was left by another app
    /// version: berth refuses to reconfigure it under running workers.
    Conflict,
    /// A request to the server failed (publish, ack, create, …).
    Request,
    /// A message on berth's subjects that berth cannot read.
    Decode,
    /// Something this machine knew is gone from the server: a volume's store deleted elsewhere.
    NotFound,
}

#[derive(Clone, Debug)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// A failed server request: `what` was being done, `e` is the client's error.
    pub(crate) fn request(what: impl fmt::Display, e: impl fmt::Display) -> Self {
        Self::new(
            ErrorKind::Request,
            format!("NATS: {what} failed: {e}; check that nats-server is running with JetStream (-js) and reachable"),
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
