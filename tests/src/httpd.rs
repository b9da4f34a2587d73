//! A scripted HTTP/1.1 server for tests of the feed-driven agent: it answers
//! every request with the reply the test has set (or the next one of a
//! queue), honours `If-None-Match` like a real server, logs every request
//! with what it answered, and can misbehave on purpose (a status, a hang, a
//! `Content-Length` larger than the body, no `Content-Length` at all).
//!
//! It is plain `std::net` with a thread per connection and one request per
//! connection (`Connection: close`), so it needs no async runtime. Bind it
//! in a test namespace with [`HttpServer::start_in`]: the listening socket
//! belongs to that namespace for its whole life (see [`Netns::enter`]), so
//! only processes in that namespace (the agent, started with `nsenter`) can
//! reach it, on that namespace's loopback.
//!
//! Dropping the server (or [`HttpServer::stop`]) closes the listener, so a
//! client then gets "connection refused", and ends every connection still
//! in a delay.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns::Netns;

/// How a reply's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    /// A correct `Content-Length`.
    Exact,
    /// No `Content-Length`: the body ends when the connection closes.
    Close,
    /// This `Content-Length`, whatever the body is (a larger one makes a
    /// truncated body: the connection closes before it is complete).
    Lie(usize),
}

/// One reply.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// How the body is framed.
    pub length: Length,
    /// Sleep this long after reading the request, before answering.
    pub delay: Duration,
}

impl Reply {
    /// `200 OK` with `body`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply::status(200, body)
    }

    /// `status` with `body`.
    pub fn status(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            length: Length::Exact,
            delay: Duration::ZERO,
        }
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Add `ETag: "tag"`. A request whose `If-None-Match` names it is
    /// answered `304 Not Modified` instead of this reply.
    pub fn etag(self, tag: &str) -> Reply {
        self.header("ETag", &format!("\"{tag}\""))
    }

    /// Answer only after `d`.
    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }

    /// Frame the body as `length` says.
    pub fn length(mut self, length: Length) -> Reply {
        self.length = length;
        self
    }

    fn etag_value(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("etag"))
            .map(|(_, v)| v.as_str())
    }
}

/// A request as the server saw it, and what it answered.
#[derive(Clone, Debug)]
pub struct Request {
    /// When it was read (request head complete).
    pub at: Instant,
    /// The request line (`GET /feed.txt HTTP/1.1`).
    pub line: String,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// The status answered (304 when the `ETag` matched).
    pub status: u16,
    /// The request body (read as far as its `Content-Length`, at most
    /// 1 MiB).
    pub body: Vec<u8>,
}

impl Request {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Script {
    current: Reply,
    queue: VecDeque<Reply>,
}

struct Shared {
    script: Mutex<Script>,
    log: Mutex<Vec<Request>>,
    stop: AtomicBool,
}

/// The server. See the [module documentation](self).
pub struct HttpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Serve on `127.0.0.1:<free port>` of namespace `ns`, answering
    /// `reply` until told otherwise.
    pub fn start_in(ns: &Netns, reply: Reply) -> HttpServer {
        let listener = ns.enter(|| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap_or_else(|e| panic!("bind 127.0.0.1:0 in {}: {e}", ns.name()))
        });
        HttpServer::start(listener, reply)
    }

    /// Serve on `listener` (of whatever namespace it was made in).
    pub fn start(listener: TcpListener, reply: Reply) -> HttpServer {
        let addr = listener.local_addr().expect("local_addr");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let shared = Arc::new(Shared {
            script: Mutex::new(Script {
                current: reply,
                queue: VecDeque::new(),
            }),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let sh = shared.clone();
        let acceptor = std::thread::spawn(move || {
            while !sh.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let sh = sh.clone();
                        std::thread::spawn(move || {
                            let _ = serve(sock, &sh);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => {
                        eprintln!("httpd {addr}: accept: {e}");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            // The listener closes here: connecting is refused from now on.
        });
        HttpServer {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/PATH` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer every request from now on with `reply` (dropping any queue).
    pub fn set(&self, reply: Reply) {
        let mut s = self.shared.script.lock().unwrap();
        s.queue.clear();
        s.current = reply;
    }

    /// Answer the next `n` requests with `reply`, then go back to the
    /// current reply.
    pub fn queue(&self, reply: Reply, n: usize) {
        let mut s = self.shared.script.lock().unwrap();
        s.queue.extend(std::iter::repeat_n(reply, n));
    }

    /// Queued replies not served yet.
    pub fn queued(&self) -> usize {
        self.shared.script.lock().unwrap().queue.len()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.log.lock().unwrap().clone()
    }

    /// How many requests so far.
    pub fn request_count(&self) -> usize {
        self.shared.log.lock().unwrap().len()
    }

    /// Stop: close the listener (new connections are refused) and end
    /// delayed replies. Waits for the listener to be closed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(mut sock: TcpStream, sh: &Shared) -> std::io::Result<()> {
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut tmp)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
        if buf.len() > 64 << 10 {
            return Ok(());
        }
    }
    let at = Instant::now();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    // A body (a POST's) is read whole: closing a socket with unread data
    // resets the connection, and the client may lose the answer.
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
    let mut body = buf[head_end.min(buf.len())..].to_vec();
    let want = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(1 << 20);
    while body.len() < want {
        let n = sock.read(&mut tmp)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    let reply = {
        let mut s = sh.script.lock().unwrap();
        let next = s.queue.pop_front();
        next.unwrap_or_else(|| s.current.clone())
    };
    let if_none_match = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("if-none-match"))
        .map(|(_, v)| v.clone());
    let not_modified = reply.status == 200
        && reply.etag_value().is_some_and(|tag| {
            if_none_match
                .as_deref()
                .is_some_and(|inm| inm.split(',').any(|t| t.trim() == tag))
        });
    let status = if not_modified { 304 } else { reply.status };
    sh.log.lock().unwrap().push(Request {
        at,
        line,
        headers,
        status,
        body,
    });
    // Sleep in small steps so a stopped server does not linger.
    let until = Instant::now() + reply.delay;
    while Instant::now() < until {
        if sh.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
    }
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nConnection: close\r\n",
        reason(status)
    );
    if not_modified {
        if let Some(tag) = reply.etag_value() {
            head.push_str(&format!("ETag: {tag}\r\n\r\n"));
        } else {
            head.push_str("\r\n");
        }
        sock.write_all(head.as_bytes())?;
    } else {
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        match reply.length {
            Length::Exact => head.push_str(&format!("Content-Length: {}\r\n", reply.body.len())),
            Length::Lie(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
            Length::Close => {}
        }
        head.push_str("\r\n");
        sock.write_all(head.as_bytes())?;
        sock.write_all(&reply.body)?;
    }
    sock.flush()?;
    sock.shutdown(Shutdown::Write)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
