//! A minimal HTTP/1.1 for the control socket: one request per connection,
//! `Content-Length` bodies only (no chunked encoding), JSON bodies. Both
//! sides live here: the server reads requests and writes responses, the
//! `ctl` client writes requests and reads responses.

use std::io::{BufRead, Read, Write};

/// Longest request line, status line or header line accepted.
pub const MAX_LINE: usize = 8 * 1024;
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 64;
/// Largest body accepted (a file copy may carry its data inline).
pub const MAX_BODY: usize = 16 << 20;

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The connection failed or timed out.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection before a complete message.
    #[error("connection closed before a complete message")]
    Eof,
    /// Not HTTP/1.x, or a line/header/body over the limits.
    #[error("malformed HTTP: {0}")]
    Malformed(String),
    /// A body this implementation does not read (chunked encoding).
    #[error("unsupported HTTP: {0}")]
    Unsupported(String),
}

/// A request as the server reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, ... (as sent, upper case expected).
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The body (empty without `Content-Length`).
    pub body: Vec<u8>,
}

/// One CRLF- (or LF-) terminated line, without the terminator.
fn read_line(r: &mut impl BufRead) -> Result<Option<String>, HttpError> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 2)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > MAX_LINE {
            HttpError::Malformed(format!("line longer than {MAX_LINE} bytes"))
        } else {
            HttpError::Eof
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| HttpError::Malformed("line is not UTF-8".into()))
}

/// Headers up to the empty line; returns the body length.
fn read_headers(r: &mut impl BufRead) -> Result<usize, HttpError> {
    let mut len = 0usize;
    for _ in 0..=MAX_HEADERS {
        let line = read_line(r)?.ok_or(HttpError::Eof)?;
        if line.is_empty() {
            return Ok(len);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| HttpError::Malformed(format!("header without a colon: {line:?}")))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            len = value
                .parse()
                .map_err(|_| HttpError::Malformed(format!("Content-Length {value:?}")))?;
            if len > MAX_BODY {
                return Err(HttpError::Malformed(format!(
                    "body of {len} bytes is over the {MAX_BODY}-byte limit"
                )));
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(HttpError::Unsupported(format!(
                "Transfer-Encoding {value} (send a Content-Length body)"
            )));
        }
    }
    Err(HttpError::Malformed(format!(
        "more than {MAX_HEADERS} header lines"
    )))
}

fn read_body(r: &mut impl BufRead, len: usize) -> Result<Vec<u8>, HttpError> {
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => HttpError::Eof,
        _ => HttpError::Io(e),
    })?;
    Ok(body)
}

/// Read one request (server side).
pub fn read_request(r: &mut impl BufRead) -> Result<Request, HttpError> {
    let line = read_line(r)?.ok_or(HttpError::Eof)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed(format!("request line {line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed(format!("version {version:?}")));
    }
    if method.is_empty() || !target.starts_with('/') {
        return Err(HttpError::Malformed(format!("request line {line:?}")));
    }
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let len = read_headers(r)?;
    let body = read_body(r, len)?;
    Ok(Request {
        method: method.to_owned(),
        path,
        body,
    })
}

/// The reason phrase of the statuses this API uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Write a JSON response and close the exchange (`Connection: close`).
pub fn write_response(
    w: &mut impl Write,
    status: u16,
    body: &serde_json::Value,
) -> std::io::Result<()> {
    let mut text = body.to_string();
    text.push('\n');
    write!(
        w,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        text.len()
    )?;
    w.write_all(text.as_bytes())?;
    w.flush()
}

/// Write a request (client side); `body` is sent as JSON.
pub fn write_request(
    w: &mut impl Write,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> std::io::Result<()> {
    let text = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        w,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n"
    )?;
    if body.is_some() {
        write!(w, "Content-Type: application/json\r\n")?;
    }
    write!(w, "Content-Length: {}\r\n\r\n", text.len())?;
    w.write_all(text.as_bytes())?;
    w.flush()
}

/// Read a response (client side): status and body.
pub fn read_response(r: &mut impl BufRead) -> Result<(u16, Vec<u8>), HttpError> {
    let line = read_line(r)?.ok_or(HttpError::Eof)?;
    let mut parts = line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(HttpError::Malformed(format!("status line {line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed(format!("status line {line:?}")));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| HttpError::Malformed(format!("status line {line:?}")))?;
    let len = read_headers(r)?;
    Ok((status, read_body(r, len)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    fn req(s: &[u8]) -> Result<Request, HttpError> {
        read_request(&mut BufReader::new(s))
    }

    #[test]
    fn request_round_trip() {
        let mut buf = Vec::new();
        let body = serde_json::json!({"pool": "external", "key": "k"});
        write_request(&mut buf, "PUT", "/api/v1/kvp.get", Some(&body)).unwrap();
        let r = req(&buf).unwrap();
        assert_eq!(r.method, "PUT");
        assert_eq!(r.path, "/api/v1/kvp.get");
        let back: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(back, body);
    }

    #[test]
    fn query_is_dropped_and_lf_only_lines_work() {
        let r = req(b"GET /api/v1/vm.info?x=1 HTTP/1.0\nHost: a\n\n").unwrap();
        assert_eq!(r.path, "/api/v1/vm.info");
        assert!(r.body.is_empty());
    }

    #[test]
    fn response_round_trip() {
        let mut buf = Vec::new();
        write_response(&mut buf, 503, &serde_json::json!({"error": "no"})).unwrap();
        let text = String::from_utf8(buf.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        let (status, body) = read_response(&mut BufReader::new(&buf[..])).unwrap();
        assert_eq!(status, 503);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "no");
    }

    #[test]
    fn malformed_requests_are_refused() {
        assert!(matches!(req(b""), Err(HttpError::Eof)));
        assert!(matches!(req(b"GET /x HTTP/1.1\r\n"), Err(HttpError::Eof)));
        assert!(matches!(req(b"GET\r\n\r\n"), Err(HttpError::Malformed(_))));
        assert!(matches!(
            req(b"GET /x SPDY/3\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            req(b"GET x HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            req(b"PUT /x HTTP/1.1\r\nContent-Length: ten\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            req(b"PUT /x HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            req(b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HttpError::Unsupported(_))
        ));
        assert!(matches!(
            req(b"PUT /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"),
            Err(HttpError::Eof)
        ));
        assert!(matches!(
            req(b"PUT /x HTTP/1.1\r\nNoColon\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LINE + 10));
        long.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert!(matches!(req(&long), Err(HttpError::Malformed(_))));
        let mut many = b"GET /x HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(req(&many), Err(HttpError::Malformed(_))));
    }
}
