//! HTTP on the gateway (`docs/contract/websocket.md`): `/ws` (the WebSocket upgrade, with
//! subprotocol negotiation and token check), `/healthz`, `/readyz`, `/metrics`. Connections are
//! served by hyper's HTTP/1 server `.with_upgrades()`, so an upgraded connection leaves hyper for
//! the session.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bus::Bus;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use protocol::Encoding;
use tokio::net::TcpStream;

use crate::Shared;
use crate::auth;
use crate::limits::Refusal;

type Body = Full<Bytes>;

pub(crate) async fn serve_connection<B: Bus>(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared<B>>,
) {
    let shutdown = shared.shutdown.clone();
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(route(request, shared).await) }
    });
    let connection = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "http connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

async fn route<B: Bus>(request: Request<Incoming>, shared: Arc<Shared<B>>) -> Response<Body> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
    }
    match request.uri().path() {
        "/" | "/index.html" => page(),
        "/ws" => upgrade(request, shared),
        "/dev/token" => dev_token(request.uri().query(), &shared),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if shared.bus.is_connected() && !shared.shutdown.is_cancelled() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: bus disconnected\n",
                )
            }
        }
        "/metrics" => match &shared.config.metrics {
            Some(render) => {
                let mut response = Response::new(Full::new(Bytes::from(render())));
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                response
            }
            None => text(StatusCode::NOT_FOUND, "metrics are not enabled\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn upgrade<B: Bus>(mut request: Request<Incoming>, shared: Arc<Shared<B>>) -> Response<Body> {
    if !fastwebsockets::upgrade::is_upgrade_request(&request) {
        return text(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket\n",
        );
    }
    // Subprotocol: the first one we speak among those offered; none offered means JSON.
    let offered: Vec<String> = request
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let encoding = if offered.is_empty() {
        Some(Encoding::Json)
    } else {
        Encoding::negotiate(offered.iter().map(String::as_str))
    };
    let Some(encoding) = encoding else {
        return text(
            StatusCode::BAD_REQUEST,
            "no supported subprotocol: offer croupier.v1.json or croupier.v1.msgpack\n",
        );
    };
    let player = match query_param(request.uri().query(), "token") {
        None => None,
        Some(token) => match auth::verify_token(&shared.config.jwt_secret, &token) {
            Ok(verified) => Some(verified),
            Err(error) => {
                tracing::debug!(%error, "token refused at upgrade");
                let message = match error {
                    auth::AuthError::Expired => "token expired\n",
                    _ => "invalid token\n",
                };
                return text(StatusCode::UNAUTHORIZED, message);
            }
        },
    };
    // Admission last, so that a refused token or subprotocol does not spend a handshake.
    let slot = match shared.admission.admit() {
        Ok(slot) => slot,
        Err(refusal) => {
            metrics::counter!("gateway_rejected_connections_total", "reason" => refusal.label())
                .increment(1);
            let message = match refusal {
                Refusal::ConnectionLimit => "this node is at its connection limit; retry later\n",
                Refusal::HandshakeRate => "too many handshakes on this node; retry shortly\n",
            };
            let mut response = text(StatusCode::SERVICE_UNAVAILABLE, message);
            response
                .headers_mut()
                .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
    };
    // The upgrade is taken from hyper before the library builds the response (whose own
    // upgrade future then stays unused): the session needs the TCP socket itself, whose write
    // side the hub's fan-out writers share (ADR 0015).
    let on_upgrade = hyper::upgrade::on(&mut request);
    let (response, _) = match fastwebsockets::upgrade::upgrade(&mut request) {
        Ok(parts) => parts,
        Err(error) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("bad upgrade request: {error}\n"),
            );
        }
    };
    let session_shared = shared.clone();
    shared.tasks.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "websocket upgrade failed");
                return;
            }
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                // Usually empty, but a view of hyper's whole read buffer: copied, so that the
                // buffer is freed rather than held for the connection's life.
                let leftover = Bytes::copy_from_slice(&parts.read_buf);
                drop(parts.read_buf);
                let stream = parts.io.into_inner();
                crate::session::run(stream, leftover, encoding, player, session_shared, slot).await;
            }
            Err(_) => tracing::error!("upgraded connection is not a TCP stream"),
        }
    });
    let (mut parts, _) = response.into_parts();
    if !offered.is_empty() {
        // Browsers abort a handshake whose chosen subprotocol is not echoed.
        parts.headers.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(encoding.subprotocol()),
        );
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}

/// The demo page (`docs/contract/websocket.md`, HTTP endpoints): plain HTML and JavaScript, no
/// build step, compiled in.
const DEMO_PAGE: &str = include_str!("../web/index.html");

fn page() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(DEMO_PAGE.as_bytes())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    response
}

/// How long a token minted by `/dev/token` is valid.
const DEV_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// `GET /dev/token?player=P`: a token for anyone who asks, so the demo page can play without a
/// terminal. Served only when the dev flag is set (ADR 0011); otherwise it does not exist.
fn dev_token<B>(query: Option<&str>, shared: &Shared<B>) -> Response<Body> {
    if !shared.config.dev_tokens {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    let Some(player) = query_param(query, "player") else {
        return text(StatusCode::BAD_REQUEST, "?player=<id> is required\n");
    };
    let player = match domain::PlayerId::parse(&player) {
        Ok(player) => player,
        Err(error) => return text(StatusCode::BAD_REQUEST, &format!("player: {error}\n")),
    };
    let token = auth::mint(
        &shared.config.jwt_secret,
        &player,
        DEV_TOKEN_TTL,
        auth::now_unix(),
    );
    let mut response = text(StatusCode::OK, &format!("{token}\n"));
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}

/// A query parameter, percent-decoded; `None` when absent or empty.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name && !value.is_empty()).then(|| percent_decode(value))
    })
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::query_param;

    #[test]
    fn the_token_is_read_from_the_query() {
        let token = |q| query_param(q, "token");
        assert_eq!(token(Some("a=1&token=abc.def")), Some("abc.def".into()));
        assert_eq!(token(Some("token=a%2Eb")), Some("a.b".into()));
        assert_eq!(token(Some("token=")), None);
        assert_eq!(token(None), None);
    }
}
