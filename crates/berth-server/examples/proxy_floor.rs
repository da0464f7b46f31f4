//! The floor of one proxy hop, the yardstick bench/http.ts runs with `BENCH_FLOORS=1` beside
//! berth's `@webServer` (README "Performance"): the least a tokio proxy on the control plane's
//! runtime (multi-thread, one worker on this 2-core host) can spend per request.
//! - `relay`: a byte relay, one upstream TCP connection per client connection, bytes copied
//!   both ways; no HTTP at all (what nginx's `stream` module or a TCP balancer does).
//! - `hyper`: a bare HTTP/1.1 reverse proxy, hyper's server and, per client connection, one
//!   hyper client connection upstream; no routing, no inputs, no limits.
//! - `lane`: the least HTTP a byte lane for web apps would do: each request's head parsed
//!   (httparse) and written anew (hop-by-hop headers dropped, a prefix header added), its
//!   body copied by its `Content-Length`; the answer's head parsed and written with a header
//!   added, its body copied by its length. Bodies of other framings are not handled (the
//!   connection closes): a yardstick for no-op `POST`s, not a proxy.
//!
//! Usage: `proxy_floor relay|hyper|lane UPSTREAM_PORT`; prints `listening PORT` (127.0.0.1).
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(Ok(upstream))) = (args.get(1), args.get(2).map(|p| p.parse::<u16>())) else {
        eprintln!("usage: proxy_floor relay|hyper|lane UPSTREAM_PORT");
        std::process::exit(2);
    };
    let mode = match mode.as_str() {
        "relay" => Mode::Relay,
        "hyper" => Mode::Hyper,
        "lane" => Mode::Lane,
        other => {
            eprintln!("proxy_floor: no mode {other}; relay, hyper or lane");
            std::process::exit(2);
        }
    };
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() else {
        eprintln!("proxy_floor: cannot start a runtime");
        std::process::exit(1);
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("proxy_floor: cannot listen: {e}");
                std::process::exit(1);
            }
        };
        println!("listening {}", listener.local_addr().map(|a| a.port()).unwrap_or(0));
        loop {
            let Ok((client, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                let _ = server.set_nodelay(true);
                match mode {
                    Mode::Hyper => proxy(client, server).await,
                    Mode::Lane => lane(client, server).await,
                    Mode::Relay => {
                        let (mut client, mut server) = (client, server);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }
            });
        }
    });
}

#[derive(Clone, Copy)]
enum Mode {
    Relay,
    Hyper,
    Lane,
}

/// Each request of `client`'s connection sent on `server`'s, its answer relayed back.
async fn proxy(client: TcpStream, server: TcpStream) {
    let Ok((send, conn)) = hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(server)).await else {
        return;
    };
    tokio::spawn(conn);
    let send = Arc::new(tokio::sync::Mutex::new(send));
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let send = Arc::clone(&send);
        async move {
            let mut send = send.lock().await;
            send.ready().await?;
            send.send_request(req).await
        }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(client), service).await;
}

/// Headers a proxy does not pass on (they describe one connection).
const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection", "te", "trailer"];

/// The `lane` mode: each request on `client`'s connection parsed, written anew to `server`'s,
/// and its answer's head parsed and written anew back, bodies copied by their length.
async fn lane(mut client: TcpStream, mut server: TcpStream) {
    let (mut from_client, mut from_server, mut out) = (Vec::new(), Vec::new(), Vec::new());
    while relay(&mut client, &mut server, &mut from_client, &mut out, request_head).await.is_some()
        && relay(&mut server, &mut client, &mut from_server, &mut out, answer_head).await.is_some()
    {}
}

/// What a head parser makes of the bytes so far: None for a head not handled, Some(None) while
/// it is not whole, else where it ends and its body's length (the head rewritten into `out`).
type Head = Option<Option<(usize, usize)>>;

/// One message from `from` to `to`: its head as `head` parses and rewrites it into `out`, then
/// its body. None once either connection ends or a head is not handled.
async fn relay(
    from: &mut TcpStream,
    to: &mut TcpStream,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    head: fn(&[u8], &mut Vec<u8>) -> Head,
) -> Option<()> {
    let (end, len) = read_head(from, buf, |b| head(b, out)).await?;
    send(to, out, buf, end, len, from).await
}

/// A request's head, rewritten into `out` with a prefix header added.
fn request_head(buf: &[u8], out: &mut Vec<u8>) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(end) = req.parse(buf).ok()? else { return Some(None) };
    let first = format!("{} {} HTTP/1.1", req.method?, req.path?);
    Some(Some((end, write_head(out, &first, req.headers, "x-forwarded-prefix: /bench")?)))
}

/// An answer's head, rewritten into `out` with a call id header added.
fn answer_head(buf: &[u8], out: &mut Vec<u8>) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(end) = res.parse(buf).ok()? else { return Some(None) };
    let first = format!("HTTP/1.1 {} {}", res.code?, res.reason.unwrap_or(""));
    Some(Some((end, write_head(out, &first, res.headers, "x-berth-function-call-id: fc-1")?)))
}

/// Reads from `io` into `buf` until `parse` makes something of a whole head (None from it: the
/// head is malformed or not handled). None when the connection ends first.
async fn read_head<T>(
    io: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut parse: impl FnMut(&[u8]) -> Option<Option<T>>,
) -> Option<T> {
    use tokio::io::AsyncReadExt;
    loop {
        if !buf.is_empty() {
            if let Some(done) = parse(buf)? {
                return Some(done);
            }
        }
        if buf.len() > 64 * 1024 || io.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// Writes the head in `out` and the `len` bytes of body after the first `head` bytes of `buf`
/// (reading the rest from `from`) to `to`; what follows in `buf` stays for the next message.
async fn send(
    to: &mut TcpStream,
    out: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    head: usize,
    len: usize,
    from: &mut TcpStream,
) -> Option<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let have = (buf.len() - head).min(len);
    out.extend_from_slice(&buf[head..head + have]);
    buf.drain(..head + have);
    to.write_all(out).await.ok()?;
    let mut left = len - have;
    while left > 0 {
        let n = from.read_buf(buf).await.ok()?;
        if n == 0 {
            return None;
        }
        let take = buf.len().min(left);
        to.write_all(&buf[..take]).await.ok()?;
        buf.drain(..take);
        left -= take;
    }
    Some(())
}

/// Writes a head into `out`: its first line, `headers` but the hop-by-hop ones, and `added`.
/// The body's length, None for a body not framed by `Content-Length`.
fn write_head(out: &mut Vec<u8>, first: &str, headers: &[httparse::Header<'_>], added: &str) -> Option<usize> {
    out.clear();
    out.extend_from_slice(first.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut len = 0;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            len = std::str::from_utf8(h.value).ok()?.trim().parse().ok()?;
        }
        if HOP_BY_HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(added.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    Some(len)
}
