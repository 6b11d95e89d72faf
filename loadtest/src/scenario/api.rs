//! The call API and the device events socket as the scenarios use them:
//! requests as a user (a user token minted with the server's API key).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

pub(crate) struct Api {
    http: reqwest::Client,
    pub(crate) base: String,
    key: control::auth::ApiKey,
}

impl Api {
    /// The API at `base_url` (`http://host:port`), as users minted with the
    /// key `key_id` / `secret`.
    pub(crate) fn new(base_url: &str, key_id: &str, secret: &str) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: base_url.trim_end_matches('/').to_string(),
            key: control::auth::ApiKey {
                id: key_id.into(),
                secret: secret.into(),
                revoked: false,
            },
        }
    }

    pub(crate) fn token(&self, user: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        control::auth::mint_user_token(&self.key, user, Duration::from_secs(900), now)
    }

    pub(crate) async fn post(&self, user: &str, path: &str, body: Value) -> (u16, Value) {
        self.send(user, reqwest::Method::POST, path, Some(body))
            .await
    }

    pub(crate) async fn send(
        &self,
        user: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token(user));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }
}

pub(crate) type Events =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A device's events socket, authenticated.
pub(crate) async fn events(api: &Api, user: &str, device: &str) -> Option<Events> {
    let url = format!("{}/v1/events", api.base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
    let auth = json!({"type": "auth", "token": api.token(user), "deviceId": device});
    ws.send(Message::text(auth.to_string())).await.ok()?;
    let first = next_json(&mut ws, Duration::from_secs(5)).await?;
    (first["type"] == "authenticated").then_some(ws)
}

pub(crate) async fn next_json(ws: &mut Events, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).ok(),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// [`events`] from the local address `source` (many sockets to one server
/// need several: one source address has ~28k ephemeral ports).
pub(crate) async fn events_from(
    api: &Api,
    user: &str,
    device: &str,
    source: IpAddr,
) -> Option<Events> {
    let ws_base = api.base.replacen("http", "ws", 1);
    let server: SocketAddr = api.base.trim_start_matches("http://").parse().ok()?;
    let socket = match server {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .ok()?;
    socket.bind(SocketAddr::new(source, 0)).ok()?;
    let stream = socket.connect(server).await.ok()?;
    let url = format!("{ws_base}/v1/events");
    // Idle sockets by the hundred thousand: small buffers on this side too.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .ok()?;
    let auth = json!({"type": "auth", "token": api.token(user), "deviceId": device});
    ws.send(Message::text(auth.to_string())).await.ok()?;
    let first = next_json(&mut ws, Duration::from_secs(10)).await?;
    (first["type"] == "authenticated").then_some(ws)
}
