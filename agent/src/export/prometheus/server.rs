//! The scrape endpoint, on hyper's HTTP/1.1 server: `GET /metrics` (and
//! `HEAD`) in the format the `Accept` header asks for, `/metrics/TENANT`
//! the same with only that tenant's series (the id percent-encoded where
//! needed; a tenant with no series yet gets an empty page), `/` says where
//! the metrics are, other paths are 404 and other methods 405.
//!
//! The page is streamed: a task reads and renders one part of the store at
//! a time and hands it to the response body through a channel of one
//! part, so a page of many series never sits in memory whole, and the
//! pipeline waits for the store only briefly. HTTP/1.1 scrapers get it
//! chunked, HTTP/1.0 ones until the connection closes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::{Format, Renderer, SERIES_PER_PART};
use crate::enrich::percent_decode;
use crate::metrics::{Metrics, SeriesFilter, Temporality};

/// Most bytes of a request head (a larger one is answered 431).
const MAX_HEAD: usize = 16 * 1024;
/// A connection that sends no complete request head for this long is closed.
const IDLE: Duration = Duration::from_secs(30);

/// Binds the endpoint (before anything is traced, so a taken port is an
/// error at start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(IDLE)
        .max_buf_size(MAX_HEAD)
        .title_case_headers(true);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("prometheus endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let metrics = Arc::clone(&metrics);
        let service = hyper::service::service_fn(move |request: Request<_>| {
            let answer = answer(&request, &metrics);
            async move { Ok::<_, Infallible>(answer) }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("prometheus endpoint: {e}");
            }
        });
    }
}

/// The response to one request.
fn answer<B>(request: &Request<B>, metrics: &Arc<Metrics>) -> Response<Page> {
    let method = request.method();
    let head_only = method == Method::HEAD;
    if method != Method::GET && !head_only {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let path = request.uri().path();
    let filter = match path.strip_prefix("/metrics") {
        Some("") => Some(SeriesFilter::All),
        Some(rest) => rest
            .strip_prefix('/')
            .filter(|t| !t.is_empty())
            .and_then(percent_decode)
            .map(|tenant| SeriesFilter::Tenant(Arc::from(tenant))),
        None => None,
    };
    match (path, filter) {
        (_, Some(filter)) => {
            let accept = request
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(",");
            let format = Format::from_accept(&accept);
            let body = if head_only {
                Page::headers_only()
            } else {
                Page::stream(Arc::clone(metrics), format, filter)
            };
            let mut response = Response::new(body);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            response
        }
        ("/", _) => text(
            StatusCode::OK,
            "sonde: metrics are at /metrics, a tenant's own at /metrics/TENANT\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found; try /metrics\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Page> {
    let mut response = Response::new(Page::whole(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A response body: a short text, or a page rendered part by part.
pub struct Page {
    whole: Option<Bytes>,
    parts: Option<mpsc::Receiver<Bytes>>,
}

impl Page {
    /// The body of a `HEAD` answer: of unknown length, like the page's,
    /// and never sent.
    fn headers_only() -> Page {
        let (_, rx) = mpsc::channel(1);
        Page {
            whole: None,
            parts: Some(rx),
        }
    }

    fn whole(text: &'static str) -> Page {
        Page {
            whole: Some(Bytes::from_static(text.as_bytes())),
            parts: None,
        }
    }

    /// Starts the task that renders the page; it stops early when the
    /// scraper goes away (the channel closes).
    fn stream(metrics: Arc<Metrics>, format: Format, filter: SeriesFilter) -> Page {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            {
                let mut collection = metrics.collect_of(Temporality::Cumulative, filter);
                let mut renderer = Renderer::new(format);
                loop {
                    let mut buf = String::new();
                    let done = match collection.next_part(SERIES_PER_PART) {
                        Some(part) => {
                            renderer.part(&part, &mut buf);
                            false
                        }
                        None => {
                            renderer.finish(&collection.resources(), &mut buf);
                            true
                        }
                    };
                    if !buf.is_empty() && tx.send(Bytes::from(buf)).await.is_err() {
                        break;
                    }
                    if done {
                        break;
                    }
                }
            }
            crate::memory::release(false);
        });
        Page {
            whole: None,
            parts: Some(rx),
        }
    }
}

impl Body for Page {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(text) = self.whole.take() {
            return Poll::Ready(Some(Ok(Frame::data(text))));
        }
        match &mut self.parts {
            Some(rx) => rx
                .poll_recv(cx)
                .map(|part| part.map(|b| Ok(Frame::data(b)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.whole.is_none() && self.parts.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.whole, &self.parts) {
            (Some(text), None) => SizeHint::with_exact(text.len() as u64),
            (None, None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
