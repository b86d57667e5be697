//! A small HTTP client for a node's local API (loopback, no TLS).

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::ApiInfo;

fn info(data_dir: &Path) -> Result<ApiInfo> {
    let path = data_dir.join("api.json");
    let text = std::fs::read(&path).with_context(|| {
        format!(
            "cannot read {}: is a node running with this data directory?",
            path.display()
        )
    })?;
    serde_json::from_slice(&text).with_context(|| format!("{} is damaged", path.display()))
}

async fn request<T: DeserializeOwned>(
    data_dir: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<T> {
    let info = info(data_dir)?;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", info.port))
        .await
        .with_context(|| {
            format!(
                "cannot reach the node's API on 127.0.0.1:{}: is the node running?",
                info.port
            )
        })?;
    let body = body
        .map(serde_json::to_vec)
        .transpose()?
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        info.token,
        body.len(),
        port = info.port
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed response from the node")?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if code != 200 {
        bail!("the node refused ({code}): {}", body.trim());
    }
    serde_json::from_str(body).with_context(|| format!("unexpected answer from the node: {body}"))
}

pub(crate) async fn get<T: DeserializeOwned>(data_dir: &Path, path: &str) -> Result<T> {
    request(data_dir, "GET", path, None).await
}

pub(crate) async fn post<T: DeserializeOwned>(
    data_dir: &Path,
    path: &str,
    body: &serde_json::Value,
) -> Result<T> {
    request(data_dir, "POST", path, Some(body)).await
}

/// Asks the node's agent (`POST /v1/account`); `T` is the response the
/// request answers with (see `chainmail_client::Response`).
pub(crate) async fn account<T: DeserializeOwned>(
    data_dir: &Path,
    request: &chainmail_client::AccountRequest,
) -> Result<T> {
    let body = serde_json::to_value(request)?;
    post(data_dir, "/v1/account", &body).await
}
