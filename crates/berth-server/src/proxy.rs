//! Web apps with a server of their own (`@webServer`, `@nodeApp`; README "API", web apps): the
//! control plane answers their requests by sending them to that server itself, over HTTP/1.1
//! to 127.0.0.1:`port` of the container the scheduler chose.
//!
//! A request is an input like any other (web.rs `to_server` submits it): the scheduler queues
//! it and assigns it a slot of a container (`@concurrent` caps, autoscaling, `maxPendingInputs`,
//! `timeout`, cancellation all as for any input). `Host::run` (plane.rs) then hands the
//! assignment ([`Assigned`]) to the request's HTTP handler instead of sending an `Execute`, and
//! the handler sends the request to the server the container reported on its Attach stream
//! (containers.rs, `AppServer`, sent before its `@enter` was done). The answer's body is relayed
//! as it comes ([`Relay`]: hyper polls it as the client's socket drains, so a slow client holds
//! the app back). The execution completes when that body ends or fails, when the scheduler
//! aborts the input (its timeout, a cancel: the answer ends short), or when the client goes away
//! (which cancels the input). A failure before the head is answered as an input's (web.rs
//! `answer_error`).
//!
//! Connections to a server are kept open between requests, per container ([`AppServer`]), and
//! go to the abstract Unix socket the container names beside the port when it names one
//! (src/run/web.ts `sideDoor`: a Node server of the container's own accepts them there too),
//! which costs the kernel less per request than TCP on loopback; they are driven by the
//! handler that uses one (the request and its answer's body are read and written
//! in the handler's own task, with no task of their own to wake).
//!
//! The control plane speaks HTTP/1.1 to the app's server itself ([`Conn`]) rather than through
//! a general client: the request's head is written once, as it came (the caller's headers, its
//! framing), with the body's first bytes in the same write; the answer's head is parsed
//! (httparse, as hyper does) and its body relayed by its framing (a length, chunks, or the
//! connection's end). hyper's client, used here before, put each request through a dispatch
//! channel and a oneshot, woke its connection's task and built the answer a second time: the
//! control plane's CPU per proxied request went from 15.7 to 13.1 µs without it (README
//! "Performance", @webServer).
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use berth_core::{Command, ContainerId, Exec, ExecId, ExecStatus, InputId};
use berth_proto::v1 as pb;
use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use crate::http::{BodyError, Limited};
use crate::plane::{error, Shared, State, Waiter};

/// Idle connections kept per server: enough for the concurrency a container usually runs.
const MAX_IDLE: usize = 256;

/// A connection idle longer than this is closed rather than used: Node closes one idle for 5 s
/// (`server.keepAliveTimeout`'s default), and a request sent as it does so would fail after
/// being sent, where one on a new connection does not.
const MAX_IDLE_TIME: std::time::Duration = std::time::Duration::from_secs(4);

/// The name of the failure a client gets as 502 (web.rs `answer_error`): the app's server
/// could not be reached, or broke off its answer.
pub(crate) const BAD_GATEWAY: &str = "WebServerError";

/// A web app member's server in one container: where it listens, and the connections to it
/// that are open and idle. Dropped with the container's link, which closes them.
pub(crate) struct AppServer {
    port: u16,
    /// The abstract Unix socket it also accepts connections on (without its leading NUL), if
    /// any: used instead of the port.
    socket: Option<String>,
    // Boxed: a connection moves in and out of the pool with each request (see `Conn`).
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<Conn>>>,
}

/// The most header lines an answer's head may have, and the most bytes (hyper's limits are
/// 100 and about 400 KiB; Node's server sends far less).
const MAX_HEADERS: usize = 100;
const MAX_HEAD: usize = 256 << 10;

/// What a read asks the socket for at first; doubled while reads fill it (a large body), up to
/// `MAX_READ`.
const FIRST_READ: usize = 4 << 10;
const MAX_READ: usize = 64 << 10;

/// One connection to a server, spoken to by hand (see the module doc): its socket, the bytes
/// read from it and not yet used, the request still going out, and how the answer in hand is
/// framed. Polled by whoever uses the connection. Boxed where it is kept and passed: it moves
/// with each request.
struct Conn {
    io: Stream,
    /// `buf[start..end]` was read and not yet used; the rest is room for the next read.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The request, while any of it is still to be written (an app may answer before it has
    /// read the body: the rest goes on as the answer is relayed).
    upload: Option<Box<Outgoing>>,
    /// The answer's body still to come.
    framing: Framing,
    /// Another request may follow on it: false once the app asked to close it, or an answer
    /// ran to the connection's end, or anything went wrong on it.
    reusable: bool,
    /// When it went back to the idle ones.
    idle_since: std::time::Instant,
}

/// How the rest of an answer's body comes (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// Nothing more: a HEAD's answer, a 204 or 304, or a body read to its end.
    Done,
    /// This many bytes.
    Length(u64),
    /// Chunks, at this point of them.
    Chunked(Chunk),
    /// Everything until the server closes the connection.
    Close,
}

/// Where a chunked body's reader is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// At a chunk's size line.
    Size,
    /// In a chunk's data: this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines (dropped) until an empty one.
    Trailers,
}

/// A request as it goes to an app's server: its head, written once, then its body by its framing.
pub(crate) struct Outgoing {
    /// What is to be written next (the head, then the body's bytes as they come), and how much of
    /// it was.
    out: Vec<u8>,
    at: usize,
    /// Whether any of it went out (or its body failed): a request none of which did can go on
    /// another connection.
    began: bool,
    /// The body, until it ends; its failure, for `poll_write` to return.
    body: Option<Limited>,
    failed: Option<std::io::Error>,
    /// The body goes chunked (it came chunked); else as it came, by its `Content-Length`.
    chunked: bool,
    /// A HEAD request: its answer has no body, whatever its head says.
    head_only: bool,
}

impl Outgoing {
    /// Writes what it can of the request, taking the body's frames as they come (those there now
    /// in one write); ready once all of it is written.
    fn poll_write(&mut self, io: &mut Stream, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if let Some(e) = self.failed.take() {
                return Poll::Ready(Err(e));
            }
            while self.at < self.out.len() {
                match Pin::new(&mut *io).poll_write(cx, &self.out[self.at..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        self.at += n;
                        self.began = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            self.out.clear();
            self.at = 0;
            if self.body.is_none() {
                return Poll::Ready(Ok(()));
            }
            if self.take_body(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    /// Puts the first of the body that is there now behind the head, so that both go in one
    /// write (a small body has come with its head).
    fn gather(&mut self) {
        let _ = self.take_body(&mut Context::from_waker(Waker::noop()));
    }

    /// Moves the body's frames that are there now into `out`, the last chunk after them when the
    /// body ends; a body that fails is kept in `failed` (the request is spoiled: never sent
    /// again). Pending when nothing was there and more is to come.
    fn take_body(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(body) = &mut self.body else { return Poll::Ready(()) };
        while self.out.len() < MAX_READ {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        push(&mut self.out, self.chunked, &data);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.failed = Some(e);
                    self.began = true;
                    return Poll::Ready(());
                }
                Poll::Ready(None) => {
                    if self.chunked {
                        self.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.body = None;
                    return Poll::Ready(());
                }
                Poll::Pending if self.out.is_empty() => return Poll::Pending,
                Poll::Pending => return Poll::Ready(()),
            }
        }
        Poll::Ready(())
    }
}

/// Appends a body's `data` to `out`, as a chunk when the body goes `chunked`.
fn push(out: &mut Vec<u8>, chunked: bool, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    if chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

impl Conn {
    fn new(io: Stream) -> Self {
        Self {
            io,
            buf: vec![0; FIRST_READ],
            start: 0,
            end: 0,
            upload: None,
            framing: Framing::Done,
            reusable: true,
            idle_since: std::time::Instant::now(),
        }
    }

    /// Ready for a request now: a kept connection whose server has not closed it (nor sent
    /// anything unasked). Its socket is only looked at when the reactor saw something on it.
    fn ready_now(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                matches!(self.io.try_read(&mut [0; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more into `buf`: the number of bytes, 0 at the connection's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            } else if self.buf.len() < MAX_HEAD {
                // A head larger than the buffer.
                self.buf.resize(self.buf.len() * 2, 0);
            } else {
                return Poll::Ready(Err(std::io::Error::other("its answer's head is too large")));
            }
        }
        let room = self.buf.len() - self.end;
        let mut read = ReadBuf::new(&mut self.buf[self.end..]);
        match Pin::new(&mut self.io).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                self.end += n;
                if n == room && self.buf.len() < MAX_READ {
                    // More is coming than a read takes: larger reads.
                    self.buf.resize(self.buf.len() * 2, 0);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Sends the rest of the request as it can (its failure is the exchange's).
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        if let Some(up) = &mut self.upload {
            match up.poll_write(&mut self.io, cx) {
                Poll::Ready(Ok(())) => self.upload = None,
                Poll::Ready(Err(e)) => {
                    self.reusable = false;
                    return Err(e);
                }
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// The answer's head (1xx heads skipped), once it is whole; the request goes on meanwhile.
    fn poll_head(&mut self, cx: &mut Context<'_>, head_only: bool) -> Poll<std::io::Result<Response<()>>> {
        loop {
            if let Err(e) = self.poll_upload(cx) {
                return Poll::Ready(Err(e));
            }
            if self.end > self.start {
                match self.parse_head(head_only) {
                    Ok(Some(res)) => return Poll::Ready(Ok(res)),
                    Ok(None) => {}
                    Err(e) => {
                        self.reusable = false;
                        return Poll::Ready(Err(e));
                    }
                }
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    self.reusable = false;
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the connection closed before an answer",
                    )));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.reusable = false;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The answer's head in `buf`, if whole: its status and headers as sent, and its framing
    /// (set in `framing`). 1xx heads are skipped: the ingress answers `Expect` itself.
    fn parse_head(&mut self, head_only: bool) -> std::io::Result<Option<Response<()>>> {
        let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        loop {
            let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut []);
            let have = &self.buf[self.start..self.end];
            let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut parsed,
                have,
                &mut headers,
            ) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) if self.end - self.start < MAX_HEAD => return Ok(None),
                Ok(httparse::Status::Partial) => return Err(bad("its answer's head is too large".into())),
                Err(e) => return Err(bad(format!("its answer's head is malformed: {e}"))),
            };
            let code = parsed.code.unwrap_or(0);
            if (100..200).contains(&code) {
                if code == 101 {
                    return Err(bad("it switched protocols, which a proxied request cannot".into()));
                }
                self.start += len;
                if self.start == self.end {
                    return Ok(None);
                }
                continue;
            }
            let status = StatusCode::from_u16(code).map_err(|e| bad(format!("its answer's status {code}: {e}")))?;
            let mut map = HeaderMap::with_capacity(parsed.headers.len());
            let (mut length, mut chunked, mut coded) = (None::<u64>, false, false);
            // HTTP/1.0 closes after the answer unless it says otherwise.
            let mut close = parsed.version == Some(0);
            for h in parsed.headers.iter() {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| bad(format!("its answer has a header named {:?}", h.name)))?;
                let value = HeaderValue::from_bytes(h.value)
                    .map_err(|_| bad(format!("its answer's header {} has a value no header can", h.name)))?;
                if name == header::CONTENT_LENGTH {
                    let n = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok());
                    match (n, length) {
                        (Some(n), None) => length = Some(n),
                        (Some(n), Some(m)) if n == m => {}
                        _ => return Err(bad("its answer's Content-Length is not one number".into())),
                    }
                } else if name == header::TRANSFER_ENCODING {
                    coded = true;
                    // Chunked only when chunked is the last coding (RFC 9112 6.3).
                    chunked = value
                        .to_str()
                        .ok()
                        .and_then(|v| v.rsplit(',').next())
                        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
                } else if name == header::CONNECTION {
                    for token in value.to_str().unwrap_or("").split(',').map(str::trim) {
                        if token.eq_ignore_ascii_case("close") {
                            close = true;
                        } else if token.eq_ignore_ascii_case("keep-alive") && parsed.version == Some(0) {
                            close = false;
                        }
                    }
                }
                map.append(name, value);
            }
            self.start += len;
            self.framing = if head_only || code == 204 || code == 304 {
                Framing::Done
            } else if coded {
                // A length beside a coding is not to be trusted (nor passed on: the client
                // gets the body framed anew), nor the connection after it.
                if length.is_some() {
                    map.remove(header::CONTENT_LENGTH);
                    close = true;
                }
                close |= !chunked;
                if chunked {
                    Framing::Chunked(Chunk::Size)
                } else {
                    Framing::Close
                }
            } else {
                match length {
                    Some(0) => Framing::Done,
                    Some(n) => Framing::Length(n),
                    None => {
                        close = true;
                        Framing::Close
                    }
                }
            };
            if close {
                self.reusable = false;
            }
            let mut res = Response::new(());
            *res.status_mut() = status;
            *res.headers_mut() = map;
            return Ok(Some(res));
        }
    }

    /// The answer body's next bytes: None at its end. The request's rest goes on meanwhile.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<std::io::Result<Bytes>>> {
        if let Err(e) = self.poll_upload(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            match self.next_bytes() {
                Ok(Some(bytes)) => return Poll::Ready(Some(Ok(bytes))),
                Ok(None) if self.framing == Framing::Done => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    self.reusable = false;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) if self.framing == Framing::Close => {
                    self.framing = Framing::Done;
                    self.reusable = false;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    self.reusable = false;
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the connection closed before the answer's end",
                    ))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.reusable = false;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The body's bytes in `buf` by its framing (a chunked body's framing lines consumed); None
    /// when more must be read first, or the body is done.
    fn next_bytes(&mut self) -> std::io::Result<Option<Bytes>> {
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        loop {
            let have = &self.buf[self.start..self.end];
            match &mut self.framing {
                Framing::Done => return Ok(None),
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                    if have.is_empty() {
                        return Ok(None);
                    }
                    let n = have.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let bytes = Bytes::copy_from_slice(&have[..n]);
                    self.start += n;
                    *left -= n as u64;
                    if *left == 0 {
                        self.framing = match self.framing {
                            Framing::Length(_) => Framing::Done,
                            _ => Framing::Chunked(Chunk::DataEnd),
                        };
                    }
                    return Ok(Some(bytes));
                }
                Framing::Close => {
                    if have.is_empty() {
                        return Ok(None);
                    }
                    let bytes = Bytes::copy_from_slice(have);
                    self.start = self.end;
                    return Ok(Some(bytes));
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if have.len() < 2 {
                        return Ok(None);
                    }
                    if &have[..2] != b"\r\n" {
                        return Err(bad("a chunk of its answer did not end with CRLF"));
                    }
                    self.start += 2;
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(state @ (Chunk::Size | Chunk::Trailers)) => {
                    let Some(eol) = have.windows(2).position(|w| w == b"\r\n") else {
                        if have.len() > 4096 {
                            return Err(bad("a chunk line of its answer is too long"));
                        }
                        return Ok(None);
                    };
                    let line = &have[..eol];
                    self.start += eol + 2;
                    if *state == Chunk::Trailers {
                        if line.is_empty() {
                            self.framing = Framing::Done;
                        }
                        continue;
                    }
                    // The size in hex; extensions after `;` ignored.
                    let digits = line.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
                    let size = (digits.len() <= 15 && digits.iter().all(u8::is_ascii_hexdigit))
                        .then(|| u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok())
                        .flatten()
                        .ok_or_else(|| bad("a chunk of its answer has no size"))?;
                    *state = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                }
            }
        }
    }

    /// Whether it can carry another request: the answer read to its end, the whole request sent,
    /// nothing more read, and neither side asked to close.
    fn done_cleanly(&self) -> bool {
        self.reusable && self.framing == Framing::Done && self.upload.is_none() && self.start == self.end
    }
}

/// A connection to the abstract Unix socket `name`. Node (libuv) binds one by the whole of
/// `sun_path`, the name padded with NULs to its 107 bytes, unless it is built to bind the name
/// alone: the padded name is tried when the name alone is refused.
async fn connect_abstract(name: &str) -> Option<UnixStream> {
    if let Ok(s) = UnixStream::connect(format!("\0{name}")).await {
        return Some(s);
    }
    UnixStream::connect(padded_abstract(name)?).await.ok()
}

/// The path of abstract Unix socket `name` as Node binds and connects to one: a NUL, the name,
/// then NULs to the whole of `sun_path` (108 bytes). None for a name too long for it.
pub(crate) fn padded_abstract(name: &str) -> Option<String> {
    const SUN_PATH: usize = 108;
    let mut path = format!("\0{name}");
    if path.len() > SUN_PATH {
        return None;
    }
    path.extend(std::iter::repeat_n('\0', SUN_PATH - path.len()));
    Some(path)
}

/// A connection's socket: TCP to the server's port, or its abstract Unix socket.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            Stream::Unix(s) => s.poll_read_ready(cx),
        }
    }

    fn try_read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read(buf),
            Stream::Unix(s) => s.try_read(buf),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Why a request did not get its head.
enum SendError {
    /// Never sent (no connection could be made): the request is still whole.
    NotSent(Box<Outgoing>, String),
    /// Sent, wholly or in part, and the connection failed.
    Sent(std::io::Error),
}

impl AppServer {
    pub(crate) fn new(port: u16, socket: String) -> Self {
        // Only Linux has abstract sockets; a name that could not be one is not used.
        let socket = (cfg!(target_os = "linux") && !socket.is_empty() && socket.len() < 100 && !socket.contains('\0'))
            .then_some(socket);
        Self { port, socket, idle: Mutex::new(Vec::new()) }
    }

    /// The connection idle the shortest time, unless even that one was idle too long (then
    /// every one is, and they all close).
    fn take_idle(&self) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let conn = idle.pop()?;
        if conn.idle_since.elapsed() < MAX_IDLE_TIME {
            return Some(conn);
        }
        let stale = std::mem::take(&mut *idle);
        drop(idle);
        drop((conn, stale));
        None
    }

    /// A connection whose answer was read to its end goes back to the idle ones.
    fn put_back(&self, mut conn: Box<Conn>) {
        conn.idle_since = std::time::Instant::now();
        if conn.buf.len() > FIRST_READ {
            // Grown for a large answer: an idle connection keeps the small buffer.
            conn.buf = vec![0; FIRST_READ];
        }
        (conn.start, conn.end) = (0, 0);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    async fn connect(&self) -> std::io::Result<Box<Conn>> {
        // The port when the socket is gone (closed by the app's code, say).
        let unix = match &self.socket {
            Some(name) => connect_abstract(name).await,
            None => None,
        };
        let stream = match unix {
            Some(unix) => Stream::Unix(unix),
            None => {
                let tcp = TcpStream::connect(("127.0.0.1", self.port)).await?;
                let _ = tcp.set_nodelay(true);
                Stream::Tcp(tcp)
            }
        };
        Ok(Box::new(Conn::new(stream)))
    }

    /// Sends `req` on an idle connection, or a new one, and reads its answer's head. A
    /// connection that fails before any of the request went out gives it back: a kept one (its
    /// server closed it meanwhile) has it sent on another, a new one returns it unsent.
    async fn send(&self, mut req: Box<Outgoing>) -> Result<(Response<()>, Box<Conn>), SendError> {
        loop {
            let (mut conn, reused) = match self.take_idle() {
                Some(mut conn) => {
                    if !conn.ready_now() {
                        continue;
                    }
                    (conn, true)
                }
                None => match self.connect().await {
                    Ok(conn) => (conn, false),
                    Err(e) => return Err(SendError::NotSent(req, format!("could not connect: {e}"))),
                },
            };
            let head_only = req.head_only;
            if !req.began {
                req.gather();
            }
            conn.upload = Some(req);
            match poll_fn(|cx| conn.poll_head(cx, head_only)).await {
                Ok(res) => return Ok((res, conn)),
                Err(e) => match conn.upload.take() {
                    Some(unsent) if !unsent.began && reused => req = unsent,
                    Some(unsent) if !unsent.began => return Err(SendError::NotSent(unsent, e.to_string())),
                    _ => return Err(SendError::Sent(e)),
                },
            }
        }
    }
}

/// One request on its way to a web app's server, in its input's waiter (plane.rs
/// `Waiter::Proxy`): the request, and where the scheduler's assignments of it and the input's
/// result go for its handler ([`Proxied`]) to take. One allocation per request, where channels
/// would take several.
pub(crate) struct Exchange {
    /// Taken by the attempt that sends it; put back by one that could not connect.
    request: Mutex<Option<Box<Outgoing>>>,
    /// Taken after the state lock when both are held (`assign` runs in the scheduler's turn).
    slot: Mutex<Slot>,
}

/// What waits for a proxied request's handler.
#[derive(Default)]
struct Slot {
    /// The next assignment; `later`, those made before it was taken (its attempt was aborted
    /// and the input assigned again before the handler ran).
    assigned: Option<Assigned>,
    later: VecDeque<Assigned>,
    /// The input's result (plane.rs `Waiter::send`): read when no answer came.
    result: Option<pb::Result>,
    /// The handler's, while it waits.
    waker: Option<Waker>,
    /// The handler is gone: an assignment is completed at once (see [`assign`]).
    gone: bool,
}

/// What the handler takes next: an assignment before the result it may have led to.
enum Next {
    Assigned(Assigned),
    Result(pb::Result),
}

impl Exchange {
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The input's result (plane.rs `Waiter::send`).
    pub(crate) fn settle(&self, result: pb::Result) {
        let mut slot = self.slot();
        slot.result = Some(result);
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }

    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        let mut slot = self.slot();
        if let Some(a) = slot.assigned.take().or_else(|| slot.later.pop_front()) {
            return Poll::Ready(Next::Assigned(a));
        }
        if let Some(r) = slot.result.take() {
            return Poll::Ready(Next::Result(r));
        }
        if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            slot.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// An attempt of a proxied request, assigned to a container by the scheduler: the server to
/// send it to, what ends it when the scheduler aborts it, and its execution to complete.
pub(crate) struct Assigned {
    server: Option<Arc<AppServer>>,
    stopped: oneshot::Receiver<()>,
    run: Run,
}

/// What an HTTP handler waits on (functions.rs `open_proxied`): the assignments of its input,
/// each of which it carries out, and the input's result when it ends without an answer.
/// Dropped before the answer (its client went away), it cancels the input.
pub(crate) struct Proxied {
    exchange: Arc<Exchange>,
    fault: Arc<Mutex<Option<BodyError>>>,
    shared: Arc<Shared>,
    input: InputId,
    settled: bool,
}

/// How a proxied request ended without a head of the app's.
pub(crate) enum Unanswered {
    /// Its body broke the server's rules (http/mod.rs `body_refused`).
    Body(BodyError),
    /// The input's failure (queue full, timeout, the container failed to start, the server
    /// could not be reached, ...).
    Failed(pb::Error),
}

/// The waiter of a proxied request's input, and, given the input's id once it is submitted,
/// what its HTTP handler waits on.
pub(crate) fn waiter(request: Box<Outgoing>) -> (Waiter, impl FnOnce(Arc<Shared>, InputId) -> Proxied) {
    // Where the body's refusal goes (http/mod.rs `Limited`); the body is whole until it is sent.
    let fault = request.body.as_ref().map_or_else(Arc::default, Limited::fault);
    let exchange = Arc::new(Exchange { request: Mutex::new(Some(request)), slot: Mutex::default() });
    let waiter = Waiter::Proxy(Arc::clone(&exchange));
    (waiter, move |shared, input| Proxied { exchange, fault, shared, input, settled: false })
}

impl Proxied {
    /// The app's answer (its head, the body to relay), or why there is none.
    pub(crate) async fn answer(mut self) -> Result<Response<Relay>, Unanswered> {
        let result = loop {
            // An assignment first: its failure's result follows it.
            match poll_fn(|cx| self.exchange.poll_next(cx)).await {
                Next::Assigned(assigned) => {
                    if let Some(res) = assigned.exchange(&self.exchange).await {
                        self.settled = true;
                        return Ok(res);
                    }
                }
                Next::Result(result) => break result,
            }
        };
        self.settled = true;
        if let Some(fault) = self.fault.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(Unanswered::Body(fault));
        }
        Err(Unanswered::Failed(match result {
            pb::Result { outcome: Some(pb::result::Outcome::Error(e)) } => e,
            _ => pb::Error {
                name: "Error".into(),
                message: "the request ended without an answer".into(),
                stack: String::new(),
            },
        }))
    }
}

impl Drop for Proxied {
    fn drop(&mut self) {
        // Assignments not taken are dropped, which completes them (`Run`'s drop), and later
        // ones are completed as they are made; outside the slot's lock, as `Run` takes the
        // state lock.
        let untaken = {
            let mut slot = self.exchange.slot();
            slot.gone = true;
            slot.waker = None;
            (slot.assigned.take(), std::mem::take(&mut slot.later))
        };
        drop(untaken);
        if self.settled {
            return;
        }
        let st = self.shared.lock();
        if st.inputs.contains_key(&self.input) {
            // Under the lock: after the input's submission.
            let _ = self.shared.commands.send(Command::Cancel(vec![self.input]));
        }
    }
}

/// Builds what goes to the app's server: the path under the app's own (`path`, with its query)
/// and the caller's headers but those of its connection (as src/run/web.ts passed them on
/// before), written as the head of an HTTP/1.1 request. The framing is the caller's
/// `Content-Length`, which the ingress read the body by, or else chunked for a body: a body
/// that came chunked goes on chunked, its `Content-Length`, if the caller sent one too,
/// dropped. `Expect: 100-continue` was the ingress's to answer (hyper does when the body is
/// first read); the app gets the body without it.
pub(crate) fn request(
    method: &hyper::Method,
    path: &str,
    mut headers: HeaderMap,
    body: Limited,
) -> Result<Box<Outgoing>, String> {
    passed_on(&mut headers);
    // A part of the ingress's URI, so this holds but for a path hyper would not have let by.
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("the path under the app's is no URI path: {path:?}"));
    }
    let chunked = !headers.contains_key(header::CONTENT_LENGTH) && !body.is_end_stream();
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Box::new(Outgoing {
        out,
        at: 0,
        began: false,
        body: Some(body),
        failed: None,
        chunked,
        head_only: method == hyper::Method::HEAD,
    }))
}

/// The caller's headers as the app gets them (see [`request`]).
fn passed_on(headers: &mut HeaderMap) {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(headers);
    headers.remove(header::EXPECT);
}

/// The headers that describe one connection, not the message (RFC 9110 7.6.1, and the
/// `Keep-Alive` and `Proxy-Connection` of older peers).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
];

/// Drops the headers that describe one connection, not the message (those `Connection` names
/// too): they are not passed on, either way. Most requests have none: one look at each name
/// tells, and nothing else is done for them.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    // What `Connection` names besides those removed below anyway (`keep-alive`, mostly).
    let mut named: Vec<HeaderName> = Vec::new();
    for value in &headers.get_all(header::CONNECTION) {
        for name in value.to_str().unwrap_or("").split(',').map(str::trim) {
            if HOP_BY_HOP.iter().any(|h| h.as_str().eq_ignore_ascii_case(name)) {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The exchange of the execution `exec` when it is a proxied request (one input, a
/// `Waiter::Proxy`), for `Host::run` to hand to its handler instead of sending an `Execute`.
pub(crate) fn exchange_of(st: &State, exec: &Exec) -> Option<Arc<Exchange>> {
    let [(input, _)] = exec.inputs[..] else { return None };
    match &st.inputs.get(&input)?.waiter {
        Waiter::Proxy(exchange) => Some(Arc::clone(exchange)),
        _ => None,
    }
}

/// Hands a proxied execution (see [`exchange_of`]) to its handler, with the server its
/// container reported for the method; the scheduler's abort of the input ends it
/// (`State::proxied`, plane.rs `Host::abort`). A handler gone already completes it here.
pub(crate) fn assign(shared: &Arc<Shared>, st: &mut State, exec: &Exec, exchange: &Exchange) {
    let (input, attempt) = exec.inputs[0];
    let server = st.links.get(&exec.container).and_then(|l| l.server(exec.method));
    let (stop, stopped) = oneshot::channel();
    st.proxied.insert(input, Running { attempt, container: exec.container, exec: exec.id, stop });
    let mut run =
        Run { shared: Arc::clone(shared), container: exec.container, exec: exec.id, input, attempt, done: false };
    let mut slot = exchange.slot();
    if slot.gone {
        drop(slot);
        run.finish_locked(st, error("InputCancelledError", "the client went away"), ExecStatus::FailedFinal);
        return;
    }
    let assigned = Assigned { server, stopped, run };
    if slot.assigned.is_none() && slot.later.is_empty() {
        slot.assigned = Some(assigned);
    } else {
        slot.later.push_back(assigned);
    }
    if let Some(w) = slot.waker.take() {
        w.wake();
    }
}

/// A proxied attempt running, as the scheduler's abort finds it (`State::proxied`).
pub(crate) struct Running {
    attempt: u32,
    container: ContainerId,
    exec: ExecId,
    /// Ends the exchange: at once before the answer's head, at the body's next poll after it.
    stop: oneshot::Sender<()>,
}

/// The scheduler aborts attempt `attempt` of input `input` (its timeout, a cancel, its
/// container stopping): if it is a proxied request's, its exchange is told to stop and its
/// execution completes now, freeing the slot, rather than when the exchange next runs. A client
/// that does not read leaves its answer's body unpolled, and an execution that outlives its
/// timeout by `OVERDUE_GRACE` has its container replaced. False for any other input.
pub(crate) fn abort(shared: &Shared, st: &mut State, input: InputId, attempt: u32) -> bool {
    if st.proxied.get(&input).is_none_or(|r| r.attempt != attempt) {
        return false;
    }
    let Some(running) = st.proxied.remove(&input) else { return false };
    let _ = running.stop.send(());
    if st.record(running.container, running.exec, vec![error("InputCancelledError", "aborted")]).is_some() {
        shared.commands.queue(Command::Complete(vec![(running.exec, ExecStatus::FailedFinal)]));
    }
    true
}

/// One attempt of a proxied input in a container: what completes its execution, once. Dropped
/// before that, its client went away: the input is cancelled and the execution completes.
pub(crate) struct Run {
    shared: Arc<Shared>,
    container: ContainerId,
    exec: ExecId,
    input: InputId,
    attempt: u32,
    done: bool,
}

impl Assigned {
    /// Sends the request to the server; the answer, or none when the attempt failed (its
    /// execution is completed with the failure, and the input's result follows).
    async fn exchange(mut self, exchange: &Exchange) -> Option<Response<Relay>> {
        let Some(server) = self.server.take() else {
            let message = format!(
                "container {} reported no server for this web app: its berth is not the control plane's; \
                 run both from the same install",
                self.run.container
            );
            self.run.finish(error(BAD_GATEWAY, message), ExecStatus::FailedFinal);
            return None;
        };
        let taken = exchange.request.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(req) = taken else {
            let message = "the container answering this request stopped after its body was sent to the app: the \
                           request was not sent again";
            self.run.finish(error(BAD_GATEWAY, message), ExecStatus::FailedFinal);
            return None;
        };
        let sent = tokio::select! {
            sent = server.send(req) => sent,
            _ = &mut self.stopped => {
                self.run.finish(error("InputCancelledError", "aborted"), ExecStatus::FailedFinal);
                return None;
            }
        };
        let port = server.port;
        match sent {
            Ok((res, conn)) => {
                let Self { stopped, run, .. } = self;
                Some(res.map(|()| Relay { conn: Some(conn), stopped, server, run }))
            }
            Err(SendError::NotSent(req, why)) => {
                *exchange.request.lock().unwrap_or_else(|e| e.into_inner()) = Some(req);
                let message = format!("the web app's server on 127.0.0.1:{port} {why}");
                self.run.finish(error(BAD_GATEWAY, message), ExecStatus::Failed);
                None
            }
            Err(SendError::Sent(e)) => {
                let message = format!("the web app's server on 127.0.0.1:{port} did not answer: {e}");
                self.run.finish(error(BAD_GATEWAY, message), ExecStatus::FailedFinal);
                None
            }
        }
    }
}

impl Run {
    /// The execution's one output, as a container's would be recorded (containers.rs), and its
    /// completion for the scheduler; nothing if the execution is no longer this attempt's (its
    /// container was lost, and the input runs again elsewhere).
    fn finish(&mut self, result: pb::Result, status: ExecStatus) {
        if self.done {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let mut st = shared.lock();
        self.finish_locked(&mut st, result, status);
        drop(st);
        shared.drive();
    }

    /// Under the state lock: its caller drives the scheduler once it lets go (or is in a turn).
    fn finish_locked(&mut self, st: &mut State, result: pb::Result, status: ExecStatus) {
        self.done = true;
        if st.proxied.get(&self.input).is_some_and(|r| r.attempt == self.attempt) {
            st.proxied.remove(&self.input);
        }
        if st.record(self.container, self.exec, vec![result]).is_some() {
            self.shared.commands.queue(Command::Complete(vec![(self.exec, status)]));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let mut st = shared.lock();
        if st.inputs.contains_key(&self.input) {
            // Under the lock: after the input's submission.
            self.shared.commands.queue(Command::Cancel(vec![self.input]));
        }
        self.finish_locked(&mut st, error("InputCancelledError", "the client went away"), ExecStatus::FailedFinal);
        drop(st);
        shared.drive();
    }
}

/// The body of the app's answer, relayed to the client as it comes; its end completes the
/// execution (and its connection goes back to the idle ones), as does an abort of the input
/// (the answer ends short) or its drop before the end (the client went away: the input is
/// cancelled, and the app's connection closes, which ends its response).
pub(crate) struct Relay {
    /// The connection the answer comes on; None once the answer broke off or was aborted.
    conn: Option<Box<Conn>>,
    stopped: oneshot::Receiver<()>,
    server: Arc<AppServer>,
    run: Run,
}

impl Relay {
    fn ended(&mut self) {
        if let Some(conn) = self.conn.take() {
            if conn.done_cleanly() {
                self.server.put_back(conn);
            }
        }
        // A web app's result: null, as a streamed Response's end is (web.rs).
        self.run.finish(pb::Result { outcome: Some(pb::result::Outcome::Value(vec![0xf6])) }, ExecStatus::Ok);
    }

    /// Nothing more to read of the answer.
    fn at_end(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.framing == Framing::Done)
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.run.done {
            return Poll::Ready(None);
        }
        // Aborted by the scheduler (its timeout, a cancel, its container stopping).
        if Pin::new(&mut this.stopped).poll(cx).is_ready() {
            this.conn = None;
            this.run.finish(error("InputCancelledError", "aborted"), ExecStatus::FailedFinal);
            return Poll::Ready(Some(Err(std::io::Error::other("the request was aborted"))));
        }
        let Some(conn) = &mut this.conn else { return Poll::Ready(None) };
        match conn.poll_body(cx) {
            Poll::Ready(Some(Ok(bytes))) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Poll::Ready(None) => {
                this.ended();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.conn = None;
                let message =
                    format!("the web app's server on 127.0.0.1:{} broke off its answer: {e}", this.server.port);
                this.run.finish(error(BAD_GATEWAY, message.clone()), ExecStatus::FailedFinal);
                Poll::Ready(Some(Err(std::io::Error::other(message))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.run.done || self.at_end()
    }

    fn size_hint(&self) -> SizeHint {
        match self.conn.as_ref().map(|c| c.framing) {
            Some(Framing::Done) => SizeHint::with_exact(0),
            Some(Framing::Length(n)) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // An answer with nothing left to read (a HEAD's, a 204) is done; any other is cut
        // short, and its run's drop cancels the input.
        if !self.run.done && self.at_end() {
            self.ended();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn connection_headers_stay_behind_and_the_rest_pass_on() {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("host", "example.com"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("x-kept", "a"),
            ("x-kept", "b"),
            ("set-cookie", "s=1"),
        ] {
            headers.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        strip_hop_by_hop(&mut headers);
        // Distinct names may change places; one name's values keep their order.
        let mut left: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap())).collect();
        left.sort_by_key(|(k, _)| *k);
        assert_eq!(left, [("host", "example.com"), ("set-cookie", "s=1"), ("x-kept", "a"), ("x-kept", "b")]);
    }

    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn a_body_goes_on_framed_as_it_came() {
        // By its length: the app gets the caller's Content-Length, not one made again.
        let mut sized = HeaderMap::new();
        sized.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
        sized.insert(header::EXPECT, "100-continue".parse().unwrap());
        passed_on(&mut sized);
        assert_eq!(names(&sized), ["content-length"]);
        assert_eq!(sized[header::CONTENT_LENGTH], "3");
        // Chunked: it goes on chunked (hyper's framing); a length sent beside it is dropped, as
        // the ingress read the body by its chunks.
        let mut chunked = HeaderMap::new();
        chunked.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        chunked.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
        chunked.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        passed_on(&mut chunked);
        assert_eq!(names(&chunked), ["content-type"]);
    }

    /// A connection whose server side sends `pieces` (each its own write, a pause between them);
    /// the answer read from it as [`AppServer::send`] and [`Relay`] read one: the head's status,
    /// the body, and whether the connection could carry another request.
    async fn answer_of(pieces: &[&[u8]], head_only: bool) -> Result<(u16, Vec<u8>, bool), String> {
        use tokio::io::AsyncWriteExt;
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        let server = tokio::spawn(async move {
            for p in pieces {
                theirs.write_all(&p).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            // Held open a while: an answer framed by the connection's end ends when it closes.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        });
        let mut conn = Conn::new(Stream::Unix(ours));
        let head = poll_fn(|cx| conn.poll_head(cx, head_only)).await.map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        while let Some(bytes) = poll_fn(|cx| conn.poll_body(cx)).await {
            body.extend_from_slice(&bytes.map_err(|e| e.to_string())?);
        }
        let reusable = conn.done_cleanly();
        server.abort();
        Ok((head.status().as_u16(), body, reusable))
    }

    #[tokio::test]
    async fn answers_are_read_by_their_framing_and_only_a_clean_end_keeps_the_connection() {
        // By length, the head and body split anywhere.
        let sized = answer_of(&[b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 5\r\n\r\nhel", b"lo"], false).await;
        assert_eq!(sized.unwrap(), (200, b"hello".to_vec(), true));
        // Chunked, with an extension, a chunk split across writes, and a trailer.
        let chunked = answer_of(
            &[
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r",
                b"\nA\r\n0123",
                b"456789\r\n0\r\nx-t: 1\r\n\r\n",
            ],
            false,
        )
        .await;
        assert_eq!(chunked.unwrap(), (200, b"abc0123456789".to_vec(), true));
        // Neither: the body is all until the server closes, and the connection goes with it.
        let closed = answer_of(&[b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"the end"], false).await;
        assert_eq!(closed.unwrap(), (200, b"until the end".to_vec(), false));
        // 1xx heads are skipped; the app asking to close is heeded.
        let continued = answer_of(
            &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"],
            false,
        )
        .await;
        assert_eq!(continued.unwrap(), (201, b"ok".to_vec(), false));
        // HTTP/1.0 closes unless it says keep-alive.
        let old = answer_of(&[b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx"], false).await;
        assert_eq!(old.unwrap(), (200, b"x".to_vec(), false));
        let kept =
            answer_of(&[b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx"], false).await;
        assert_eq!(kept.unwrap(), (200, b"x".to_vec(), true));
        // No body after a HEAD's answer, a 204 or a 304, whatever the head says.
        let head = answer_of(&[b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n"], true).await;
        assert_eq!(head.unwrap(), (200, Vec::new(), true));
        let empty = answer_of(&[b"HTTP/1.1 204 No Content\r\n\r\n"], false).await;
        assert_eq!(empty.unwrap(), (204, Vec::new(), true));
        // A length beside chunks: the chunks frame it, and the connection is not used again.
        let both = answer_of(
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
            false,
        )
        .await;
        assert_eq!(both.unwrap(), (200, b"ok".to_vec(), false));
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(Stream::Unix(ours));
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\nx-a: 1\r\n\r\n";
        conn.buf[..head.len()].copy_from_slice(head);
        conn.end = head.len();
        let res = conn.parse_head(false).unwrap().unwrap();
        assert_eq!(names(res.headers()), ["transfer-encoding", "x-a"]);
        // Bytes past the answer: the connection is not used again.
        let extra = answer_of(&[b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxy"], false).await;
        assert_eq!(extra.unwrap(), (200, b"x".to_vec(), false));
    }

    #[tokio::test]
    async fn a_broken_answer_is_an_error_not_a_short_body() {
        let short = answer_of(&[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], false).await;
        assert!(short.unwrap_err().contains("before the answer's end"));
        let chunk = answer_of(&[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"], false).await;
        assert!(chunk.unwrap_err().contains("no size"));
        let lengths = answer_of(&[b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx"], false).await;
        assert!(lengths.unwrap_err().contains("not one number"));
        let garbage = answer_of(&[b"HTTP/1.1 abc\r\n\r\n"], false).await;
        assert!(garbage.unwrap_err().contains("malformed"));
        let none = answer_of(&[], false).await;
        assert!(none.unwrap_err().contains("closed before an answer"));
    }
}
