//! A WebSocket test client (tokio-tungstenite: not our server's code) speaking raw JSON, so
//! tests check the wire protocol as a client sees it, independently of our protocol types.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the server sent that is not a JSON message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEnd {
    Closed(Option<u16>, String),
    TimedOut,
    Error(String),
}

/// A connected client.
#[derive(Debug)]
pub struct WsClient {
    stream: Stream,
    /// The subprotocol the server chose (`Sec-WebSocket-Protocol` of the response).
    pub subprotocol: Option<String>,
}

impl WsClient {
    /// Connects to `url`, offering `subprotocol` when given.
    pub async fn connect(url: &str, subprotocol: Option<&str>) -> Result<Self, tungstenite::Error> {
        let mut request = url.into_client_request()?;
        if let Some(protocol) = subprotocol {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(protocol)
                    .map_err(|e| tungstenite::Error::HttpFormat(e.into()))?,
            );
        }
        let (stream, response) = tokio_tungstenite::connect_async(request).await?;
        let subprotocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(Self {
            stream,
            subprotocol,
        })
    }

    pub async fn send_json(&mut self, value: &Value) -> Result<(), tungstenite::Error> {
        self.stream.send(Message::text(value.to_string())).await
    }

    /// Sends raw text (e.g. malformed JSON).
    pub async fn send_text(&mut self, text: &str) -> Result<(), tungstenite::Error> {
        self.stream.send(Message::text(text.to_string())).await
    }

    /// The next JSON message, or how the connection ended.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Value, WsEnd> {
        loop {
            let next = match tokio::time::timeout(timeout, self.stream.next()).await {
                Err(_) => return Err(WsEnd::TimedOut),
                Ok(None) => return Err(WsEnd::Closed(None, String::new())),
                Ok(Some(Err(e))) => return Err(WsEnd::Error(e.to_string())),
                Ok(Some(Ok(message))) => message,
            };
            match next {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str())
                        .map_err(|e| WsEnd::Error(format!("not JSON: {e}: {text}")));
                }
                Message::Binary(bytes) => {
                    return Err(WsEnd::Error(format!(
                        "unexpected binary frame of {} bytes",
                        bytes.len()
                    )));
                }
                Message::Close(frame) => {
                    let (code, reason) = close_parts(frame);
                    return Err(WsEnd::Closed(code, reason));
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
        }
    }

    /// Reads messages until one satisfies `wanted` (others are skipped), within `timeout` in all.
    pub async fn recv_until(
        &mut self,
        timeout: Duration,
        mut wanted: impl FnMut(&Value) -> bool,
    ) -> Result<Value, WsEnd> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(WsEnd::TimedOut);
            }
            let message = self.recv(left).await?;
            if wanted(&message) {
                return Ok(message);
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

fn close_parts(frame: Option<CloseFrame>) -> (Option<u16>, String) {
    match frame {
        Some(frame) => (Some(u16::from(frame.code)), frame.reason.to_string()),
        None => (None, String::new()),
    }
}
