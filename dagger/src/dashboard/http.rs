//! The live view's HTTP/1.1 server: as much of HTTP as one page and two JSON routes need,
//! over tokio's `TcpListener`, with `httparse` reading the request head. One request per
//! connection (`Connection: close`); `GET` and `HEAD` only; bounded head size, bounded
//! time to send it and to take the answer, bounded connections at once.
//!
//! Not a web framework on purpose: `http` (under `hyper` and `axum`) adds comparisons of
//! its types with `u16` and `str`, which, once in a program's dependencies, make
//! `assert_eq!(n, iter.sum())` and the like in the program ambiguous to type inference.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};

/// The largest request head read (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// The most headers a request may have.
const MAX_HEADERS: usize = 64;
/// How long a client has to send its request head, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once (the page makes two a poll).
const MAX_CONNECTIONS: usize = 64;

/// A request, as the routes see it.
pub(super) struct Request {
    /// The path, without the query.
    pub(super) path: String,
    /// The query (after `?`), empty if none.
    pub(super) query: String,
    /// The `Host` header, if one.
    pub(super) host: Option<String>,
}

/// An answer.
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) content_type: &'static str,
    pub(super) body: String,
}

impl Response {
    /// A `200` with a body of `content_type`.
    pub(super) fn ok(content_type: &'static str, body: String) -> Self {
        Self {
            status: 200,
            content_type,
            body,
        }
    }

    /// An answer of `status` with a line of text.
    pub(super) fn text(status: u16, text: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{text}\n"),
        }
    }
}

/// Accepts connections until `stop` fires (or its sender is dropped) and answers each
/// request with `route`.
pub(super) async fn serve<R, F>(listener: TcpListener, route: R, mut stop: oneshot::Receiver<()>)
where
    R: Fn(Request) -> F + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let route = Arc::new(route);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait a little instead of spinning.
                tracing::debug!(error = %e, "live view: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let route = route.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &*route).await {
                tracing::debug!(error = %e, "live view: connection ended");
            }
            drop(permit);
        });
    }
}

/// Why a connection ended without an answer.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    /// Reading or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The client took longer than [`IO_TIMEOUT`].
    #[error("the client was too slow")]
    Timeout,
}

async fn connection<R, F>(mut stream: TcpStream, route: &R) -> Result<(), ConnError>
where
    R: Fn(Request) -> F,
    F: Future<Output = Response>,
{
    let head = tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| ConnError::Timeout)??;
    let (answer, head_only) = match head {
        Head::Request {
            method,
            request: req,
        } => match method {
            Method::Get => (route(req).await, false),
            Method::Head => (route(req).await, true),
            Method::Other => (Response::text(405, "only GET and HEAD"), false),
        },
        Head::TooLarge => (Response::text(431, "request head too large"), false),
        Head::Malformed => (Response::text(400, "malformed request"), false),
        // The client closed before sending a request.
        Head::Closed => return Ok(()),
    };
    let bytes = encode(&answer, head_only);
    tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| ConnError::Timeout)??;
    Ok(())
}

enum Method {
    Get,
    Head,
    Other,
}

enum Head {
    Request { method: Method, request: Request },
    TooLarge,
    Malformed,
    Closed,
}

/// Reads until the request head is complete, at most [`MAX_HEAD`] bytes.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(if buf.is_empty() {
                Head::Closed
            } else {
                Head::Malformed
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_head(&buf) {
            Some(head) => return Ok(head),
            None if buf.len() >= MAX_HEAD => return Ok(Head::TooLarge),
            None => {}
        }
    }
}

/// The request in `buf`, or `None` while its head is incomplete.
fn parse_head(buf: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Head::TooLarge),
        Err(_) => Some(Head::Malformed),
        Ok(httparse::Status::Complete(_)) => {
            let (Some(method), Some(target)) = (req.method, req.path) else {
                return Some(Head::Malformed);
            };
            let method = match method {
                "GET" => Method::Get,
                "HEAD" => Method::Head,
                _ => Method::Other,
            };
            let host = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(|h| h.trim().to_owned());
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            Some(Head::Request {
                method,
                request: Request {
                    path: path.to_owned(),
                    query: query.to_owned(),
                    host,
                },
            })
        }
    }
}

/// The answer's bytes (without its body for `HEAD`).
fn encode(r: &Response, head_only: bool) -> Vec<u8> {
    let reason = match r.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\n\
         Content-Type: {}\r\n\
         Content-Length: {}\r\n\
         Cache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'\r\n\
         Connection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    )
    .into_bytes();
    if r.status == 405 {
        out.splice(out.len() - 2..out.len() - 2, *b"Allow: GET, HEAD\r\n");
    }
    if !head_only {
        out.extend_from_slice(r.body.as_bytes());
    }
    out
}

/// Whether `host` (a `Host` header) names a loopback host: `127.0.0.1:P`, `[::1]:P`,
/// `localhost:P`, with or without the port.
pub(super) fn is_loopback_host(host: &str) -> bool {
    // Without the port, if any (an IPv6 literal keeps its brackets).
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The value of `key` in a query string (`a=1&since=5`), if there.
pub(super) fn query_param<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_pass() {
        for host in [
            "127.0.0.1:8787",
            "localhost:8787",
            "LOCALHOST",
            "[::1]:80",
            "127.1.2.3",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:8787",
            "10.0.0.1:8787",
            "[::1",
            "localhost.evil:1",
            ":8787",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn request_heads_are_parsed_or_refused() {
        let get = b"GET /api/tasks?since=7 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n";
        match parse_head(get) {
            Some(Head::Request {
                method: Method::Get,
                request,
            }) => {
                assert_eq!(request.path, "/api/tasks");
                assert_eq!(query_param(&request.query, "since"), Some("7"));
                assert_eq!(request.host.as_deref(), Some("127.0.0.1:1"));
            }
            _ => panic!("not parsed"),
        }
        assert!(parse_head(&get[..20]).is_none(), "incomplete");
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n"),
            Some(Head::Malformed)
        ));
        assert!(matches!(
            parse_head(b"POST / HTTP/1.1\r\n\r\n"),
            Some(Head::Request {
                method: Method::Other,
                ..
            })
        ));
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(parse_head(many.as_bytes()), Some(Head::TooLarge)));
    }

    #[test]
    fn answers_carry_their_length_and_close() {
        let r = Response::ok("application/json", "{}".into());
        let text = String::from_utf8(encode(&r, false)).expect("UTF-8");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 2\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{}"), "{text}");
        let head = String::from_utf8(encode(&r, true)).expect("UTF-8");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        let refused = String::from_utf8(encode(&Response::text(405, "no"), false)).expect("UTF-8");
        assert!(refused.contains("Allow: GET, HEAD\r\n"), "{refused}");
        assert!(query_param("a=1&b", "b").is_none());
    }
}
