//! A minimal typed WebSocket client for protocol v1, used by tests, bots and
//! the native client core.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{
    Connector, MaybeTlsStream, WebSocketStream, connect_async, connect_async_tls_with_config,
};

use crate::{
    ClientMessage, DEFAULT_MAX_MESSAGE_BYTES, DecodeError, ServerMessage, decode_server, encode,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("server sent a bad message: {0}")]
    Decode(#[from] DecodeError),
    #[error("the server closed the connection")]
    Closed,
}

pub struct SignalingClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl SignalingClient {
    /// Connects to a `ws://` or `wss://` URL such as `ws://127.0.0.1:7880/v1/rtc`
    /// (`wss://` trusting the system's roots).
    pub async fn connect(url: &str) -> Result<SignalingClient, ClientError> {
        let (ws, _) = connect_async(url).await?;
        Ok(SignalingClient { ws })
    }

    /// [`SignalingClient::connect`] with the client's own TLS configuration
    /// for `wss://` (the client core's: the platform's verifier plus any
    /// private CA the app trusts).
    pub async fn connect_with_tls(
        url: &str,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<SignalingClient, ClientError> {
        let connector = Some(Connector::Rustls(tls));
        let (ws, _) = connect_async_tls_with_config(url, None, false, connector).await?;
        Ok(SignalingClient { ws })
    }

    pub async fn send(&mut self, message: &ClientMessage) -> Result<(), ClientError> {
        self.send_raw(encode(message)).await
    }

    /// Sends any text frame, valid or not (tests use it for bad input).
    pub async fn send_raw(&mut self, text: String) -> Result<(), ClientError> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// The next server message, skipping WebSocket control frames.
    pub async fn recv(&mut self) -> Result<ServerMessage, ClientError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return Ok(decode_server(&text, DEFAULT_MAX_MESSAGE_BYTES)?);
                }
                Some(Ok(Message::Close(_))) | None => return Err(ClientError::Closed),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    pub async fn close(mut self) -> Result<(), ClientError> {
        self.ws.close(None).await?;
        Ok(())
    }
}
