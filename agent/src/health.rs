//! The liveness and readiness endpoint a DaemonSet probes: `GET /healthz`
//! answers 200 while the agent runs; `GET /readyz` answers 200 once the
//! probes are attached (and 503 before), so a rolling update waits for each
//! node's agent to trace before moving on.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// Serves the endpoint on `listener` until the task is aborted. `ready`
/// says whether the probes are attached.
pub async fn serve(listener: TcpListener, ready: Arc<AtomicBool>) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(8 * 1024);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let ready = Arc::clone(&ready);
        let service = hyper::service::service_fn(move |request: Request<_>| {
            let answer = answer(&request, ready.load(Ordering::Acquire));
            async move { Ok::<_, Infallible>(answer) }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("health endpoint: {e}");
            }
        });
    }
}

fn answer<B>(request: &Request<B>, ready: bool) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ready => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "attaching probes\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz or /readyz\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, ready: bool) -> StatusCode {
        let request = Request::get(path).body(()).expect("request");
        answer(&request, ready).status()
    }

    #[test]
    fn liveness_and_readiness() {
        assert_eq!(get("/healthz", false), StatusCode::OK);
        assert_eq!(get("/readyz", false), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get("/readyz", true), StatusCode::OK);
        assert_eq!(get("/metrics", true), StatusCode::NOT_FOUND);
        let post = Request::post("/healthz").body(()).expect("request");
        assert_eq!(answer(&post, true).status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
