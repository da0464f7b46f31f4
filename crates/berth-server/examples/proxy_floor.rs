//! The floor of one proxy hop, the yardstick bench/http.ts runs with `BENCH_FLOORS=1` beside
//! berth's `@webServer` (README "Performance"): the least a tokio proxy on the control plane's
//! runtime (multi-thread, one worker on this 2-core host) can spend per request.
//! - `relay`: a byte relay, one upstream TCP connection per client connection, bytes copied
//!   both ways; no HTTP at all (what nginx's `stream` module or a TCP balancer does).
//! - `hyper`: a bare HTTP/1.1 reverse proxy, hyper's server and, per client connection, one
//!   hyper client connection upstream; no routing, no inputs, no limits.
//!
//! Usage: `proxy_floor relay|hyper UPSTREAM_PORT`; prints `listening PORT` (127.0.0.1).
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(Ok(upstream))) = (args.get(1), args.get(2).map(|p| p.parse::<u16>())) else {
        eprintln!("usage: proxy_floor relay|hyper UPSTREAM_PORT");
        std::process::exit(2);
    };
    let hyper = match mode.as_str() {
        "relay" => false,
        "hyper" => true,
        other => {
            eprintln!("proxy_floor: no mode {other}; relay or hyper");
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
                if hyper {
                    proxy(client, server).await;
                } else {
                    let (mut client, mut server) = (client, server);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
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
