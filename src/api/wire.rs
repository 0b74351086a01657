//! JSON bodies for the errors hyper answers by itself.
//!
//! hyper refuses some requests before any handler sees them, with an empty body: a request line it
//! cannot parse (400), a URI of 64 KiB or more (414: a 100 KB `nextPageToken`), headers larger than its
//! buffer (431). Every other error of this API is `{"error":{"code":N,"message":"..."}}`, and clients
//! rely on that. hyper has no hook for these answers, so [`JsonErrors`] wraps each connection and
//! rewrites, on the way out, a response head with one of those statuses and `content-length: 0` into
//! the same head with fleet's JSON error body. No handler of this API answers one of those statuses
//! with an empty body, so only hyper's own answers match.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::SERVER;

/// A listener whose connections get JSON bodies on hyper's own error answers.
pub struct JsonErrors<L>(pub L);

impl<L: axum::serve::Listener> axum::serve::Listener for JsonErrors<L> {
    type Io = JsonErrorIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (
            JsonErrorIo {
                inner: io,
                pending: None,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, JsonErrors<super::access::TlsListener>>,
    > for super::access::Peer
{
    fn connect_info(
        stream: axum::serve::IncomingStream<'_, JsonErrors<super::access::TlsListener>>,
    ) -> super::access::Peer {
        stream.remote_addr().clone()
    }
}

/// One connection; see the module docs.
pub struct JsonErrorIo<T> {
    inner: T,
    /// A rewritten answer being written: its bytes, how many are written, and the length of the
    /// buffer hyper gave (reported as written once all of it is out).
    pending: Option<(Vec<u8>, usize, usize)>,
}

/// The JSON answer that replaces hyper's empty one, if `buf` is such an answer.
fn rewrite(buf: &[u8]) -> Option<Vec<u8>> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if head_end != buf.len() || !buf.starts_with(b"HTTP/1.1 ") || buf.len() < 12 {
        return None;
    }
    let (code, message) = match &buf[9..12] {
        b"400" => (400, "malformed HTTP request"),
        b"414" => (
            414,
            "request URI is too long (fleetd accepts URIs shorter than 65535 bytes)",
        ),
        b"431" => (431, "request headers are too large"),
        _ => return None,
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let body = serde_json::to_string(&fleet_api_types::ErrorDoc {
        error: fleet_api_types::ErrorBody {
            code,
            message: message.to_string(),
            machine_ids: Vec::new(),
        },
    })
    .expect("an error document always serializes");
    let status_line = &buf[..buf.windows(2).position(|w| w == b"\r\n")?];
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(status_line);
    out.extend_from_slice(
        format!(
            "\r\ncontent-type: application/json\r\nserver: {SERVER}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    Some(out)
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrorIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrorIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            match rewrite(buf) {
                Some(answer) => this.pending = Some((answer, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        let (answer, written, reported) = this.pending.as_mut().expect("set above");
        while *written < answer.len() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        let reported = *reported;
        this.pending = None;
        Poll::Ready(Ok(reported))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Not vectored: hyper then writes each answer's head as one buffer, which `rewrite` can see whole.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_empty_error_answers_are_rewritten() {
        let hyper_414 = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(rewrite(hyper_414).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{out}");
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], 414);
        assert!(rewrite(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n"
        )
        .is_some());
        // Answers with a body, other statuses, or a head followed by more bytes are left alone.
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n{}").is_none());
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
    }
}
