//! A WebSocket test client (tokio-tungstenite: not our server's code) speaking raw JSON, so
//! tests check the wire protocol as a client sees it, independently of our protocol types.
//!
//! When the server chose `croupier.v1.msgpack`, the client speaks MessagePack instead (binary
//! frames, named maps) and still hands tests `serde_json::Value`s, so one contract test runs in
//! both encodings.

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

/// The MessagePack subprotocol: with it the client sends and expects binary MessagePack frames.
pub const MSGPACK_SUBPROTOCOL: &str = "croupier.v1.msgpack";

/// Why a WebSocket handshake failed, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectRefused {
    /// The server answered the upgrade with this HTTP status and body.
    Http(u16, String),
    Other(String),
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

    /// Connects like [`WsClient::connect`], and on a refused handshake says how it was refused.
    pub async fn try_connect(url: &str, subprotocol: Option<&str>) -> Result<Self, ConnectRefused> {
        match Self::connect(url, subprotocol).await {
            Ok(client) => Ok(client),
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err(ConnectRefused::Http(status, body))
            }
            Err(other) => Err(ConnectRefused::Other(other.to_string())),
        }
    }

    /// Whether the server chose MessagePack (`croupier.v1.msgpack`).
    pub fn is_msgpack(&self) -> bool {
        self.subprotocol.as_deref() == Some(MSGPACK_SUBPROTOCOL)
    }

    /// Sends a message in the negotiated encoding: JSON text, or a MessagePack map with named
    /// fields in a binary frame.
    pub async fn send_json(&mut self, value: &Value) -> Result<(), tungstenite::Error> {
        if self.is_msgpack() {
            let bytes = rmp_serde::to_vec_named(value)
                .map_err(|e| tungstenite::Error::Io(std::io::Error::other(e)))?;
            self.stream.send(Message::binary(bytes)).await
        } else {
            self.stream.send(Message::text(value.to_string())).await
        }
    }

    /// Sends raw bytes in a binary frame (e.g. malformed MessagePack).
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), tungstenite::Error> {
        self.stream.send(Message::binary(bytes)).await
    }

    /// Sends one raw frame: `opcode` 0 (continuation), 1 (text) or 2 (binary), with `fin`.
    /// For fragmented messages and frames a library would refuse to build.
    pub async fn send_frame(
        &mut self,
        opcode: u8,
        payload: Vec<u8>,
        fin: bool,
    ) -> Result<(), tungstenite::Error> {
        use tungstenite::protocol::frame::Frame;
        use tungstenite::protocol::frame::coding::{Data, OpCode};
        let data = match opcode {
            0 => Data::Continue,
            1 => Data::Text,
            2 => Data::Binary,
            other => Data::Reserved(other),
        };
        let frame = Frame::message(payload, OpCode::Data(data), fin);
        self.stream.send(Message::Frame(frame)).await
    }

    /// Sends a WebSocket ping frame.
    pub async fn send_ping(&mut self) -> Result<(), tungstenite::Error> {
        self.stream.send(Message::Ping(Vec::new().into())).await
    }

    /// Sends a WebSocket ping frame with `payload` and waits for the pong that echoes it
    /// (messages in between are dropped). `false` when none came within `timeout`.
    pub async fn ping_pong(&mut self, payload: &[u8], timeout: Duration) -> bool {
        if self
            .stream
            .send(Message::Ping(payload.to_vec().into()))
            .await
            .is_err()
        {
            return false;
        }
        let wait = async {
            while let Some(Ok(message)) = self.stream.next().await {
                if let Message::Pong(echo) = message
                    && echo.as_ref() == payload
                {
                    return true;
                }
            }
            false
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// Reads frames without answering anything, until a Close or the end: for checking how the
    /// server ends a connection. Returns the close code if one came.
    pub async fn recv_close(&mut self, timeout: Duration) -> Result<Option<u16>, WsEnd> {
        loop {
            match self.recv(timeout).await {
                Ok(_) => continue,
                Err(WsEnd::Closed(code, _)) => return Ok(code),
                Err(other) => return Err(other),
            }
        }
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
                Message::Text(_) if self.is_msgpack() => {
                    return Err(WsEnd::Error(
                        "unexpected text frame on a MessagePack connection".into(),
                    ));
                }
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str())
                        .map_err(|e| WsEnd::Error(format!("not JSON: {e}: {text}")));
                }
                Message::Binary(bytes) if self.is_msgpack() => {
                    return rmp_serde::from_slice::<Value>(&bytes)
                        .map_err(|e| WsEnd::Error(format!("not MessagePack: {e}")));
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
