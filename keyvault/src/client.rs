//! [`HttpVault`]: the [`KeyVault`] trait spoken over HTTP to a `lethe keyvault serve`, so Lethe
//! uses a remote vault exactly like an in-process one.
//!
//! Architecture invariant: the token and received keys are held in zeroizing buffers; errors
//! carry the server's problem `detail` (which never contains key bytes) but never a body that
//! held keys.

use async_trait::async_trait;
use base64::Engine as _;
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;
use zeroize::Zeroizing;

use crate::limits::{CLIENT_CONNECT_TIMEOUT, CLIENT_REQUEST_TIMEOUT};
use crate::wire::{
    CreateRequest, CreateResponse, DestroyStreamResponse, DestroySubjectResponse, EpochsResponse, FetchRequest,
    FetchResponse, Problem, StreamRequest, SubjectRequest, WireStatus,
};
use crate::{Dek, EpochInfo, KeyId, KeyLookup, KeyVault, NewKey, VaultError, VaultStats};

pub struct HttpVault {
    base: reqwest::Url,
    token: Zeroizing<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for HttpVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpVault")
            .field("base", &self.base.as_str())
            .field("token", &"<redacted>")
            .finish()
    }
}

impl HttpVault {
    /// A client for the vault server at `url` (`http(s)://host:port`).
    pub fn new(url: &str, token: &str) -> Result<HttpVault, VaultError> {
        let mut base =
            reqwest::Url::parse(url).map_err(|e| VaultError::InvalidInput(format!("bad key vault URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(VaultError::InvalidInput(
                "key vault URL must be http:// or https://".into(),
            ));
        }
        if base.scheme() == "http" && !is_loopback(&base) {
            // Keys and the token would cross the network in clear.
            warn!(host = ?base.host_str(), "key vault reached over plain http on a non-loopback host; use https");
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .timeout(CLIENT_REQUEST_TIMEOUT)
            .connect_timeout(CLIENT_CONNECT_TIMEOUT)
            .build()
            .map_err(|e| VaultError::Internal(format!("building HTTP client: {e}")))?;
        Ok(HttpVault {
            base,
            token: Zeroizing::new(token.to_string()),
            http,
        })
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, VaultError> {
        self.base
            .join(path)
            .map_err(|e| VaultError::Internal(format!("building URL: {e}")))
    }

    async fn post<B: Serialize + ?Sized, R: DeserializeOwned>(&self, path: &str, body: &B) -> Result<R, VaultError> {
        let request = self.http.post(self.url(path)?).json(body);
        self.send(request).await
    }

    async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, VaultError> {
        let request = self.http.get(self.url(path)?);
        self.send(request).await
    }

    async fn send<R: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<R, VaultError> {
        let response = request
            .bearer_auth(self.token.as_str())
            .send()
            .await
            .map_err(|e| VaultError::Unavailable(format!("key vault request failed: {e}")))?;
        let status = response.status();
        // Copied into a zeroizing buffer: successful bodies may hold keys.
        let body = Zeroizing::new(
            response
                .bytes()
                .await
                .map_err(|e| VaultError::Unavailable(format!("reading key vault response: {e}")))?
                .to_vec(),
        );
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| VaultError::Internal(format!("unexpected key vault response: {e}")));
        }
        Err(error_from(status, &body))
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Maps a problem response back to the error the server had.
fn error_from(status: StatusCode, body: &[u8]) -> VaultError {
    let Ok(p) = serde_json::from_slice::<Problem>(body) else {
        let msg = format!("key vault answered HTTP {status}");
        return if status.is_server_error() {
            VaultError::Unavailable(msg)
        } else {
            VaultError::Internal(msg)
        };
    };
    let stream = p.stream.unwrap_or_default();
    match p.code.as_str() {
        "key_destroyed" => VaultError::KeyDestroyed { stream },
        "key_unreadable" => match p.epoch {
            Some(epoch) => VaultError::KeyUnreadable { stream, epoch },
            None => VaultError::Internal(format!("key vault: {} (key_unreadable without an epoch)", p.detail)),
        },
        "subject_mismatch" => VaultError::SubjectMismatch { stream },
        "subject_forgotten" => VaultError::SubjectForgotten {
            subject: p.subject.unwrap_or_default(),
        },
        "unauthorized" => VaultError::Unauthorized,
        "invalid_request" | "payload_too_large" => VaultError::InvalidInput(p.detail),
        "unavailable" => VaultError::Unavailable(p.detail),
        "corrupt" => VaultError::Corrupt(p.detail),
        "storage_error" => VaultError::Storage(p.detail),
        _ if status.is_server_error() => VaultError::Unavailable(p.detail),
        _ => VaultError::Internal(format!("key vault: {} ({})", p.detail, p.code)),
    }
}

fn decode_key(text: &str) -> Result<Dek, VaultError> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|_| VaultError::Internal("key vault sent a key that is not base64".into()))?,
    );
    Dek::from_slice(&bytes)
}

#[async_trait]
impl KeyVault for HttpVault {
    async fn create_keys(&self, keys: &[NewKey]) -> Result<Vec<(KeyId, Dek)>, VaultError> {
        let response: CreateResponse = self
            .post("v1/keys/create", &CreateRequest { keys: keys.into() })
            .await?;
        if response.keys.len() != keys.len() {
            return Err(VaultError::Internal(
                "key vault returned a different number of keys than requested".into(),
            ));
        }
        response.keys.iter().map(|k| Ok((k.id, decode_key(&k.key)?))).collect()
    }

    async fn fetch_keys(&self, ids: &[KeyId]) -> Result<Vec<(KeyId, KeyLookup)>, VaultError> {
        let response: FetchResponse = self.post("v1/keys/fetch", &FetchRequest { ids: ids.into() }).await?;
        if response.keys.len() != ids.len() || response.keys.iter().zip(ids).any(|(k, id)| k.id != *id) {
            return Err(VaultError::Internal(
                "key vault answered for different key ids than requested".into(),
            ));
        }
        response
            .keys
            .iter()
            .map(|k| {
                let lookup = match (k.status, &k.key) {
                    (WireStatus::Live, Some(key)) => KeyLookup::Live(decode_key(key)?),
                    (WireStatus::Live, None) => {
                        return Err(VaultError::Internal("key vault said live but sent no key".into()));
                    }
                    (WireStatus::Destroyed, _) => KeyLookup::Destroyed,
                    (WireStatus::NotFound, _) => KeyLookup::NotFound,
                    (WireStatus::Unreadable, _) => match k.epoch {
                        Some(epoch) => KeyLookup::Unreadable { epoch },
                        None => {
                            return Err(VaultError::Internal(
                                "key vault said unreadable but sent no KEK epoch".into(),
                            ));
                        }
                    },
                };
                Ok((k.id, lookup))
            })
            .collect()
    }

    async fn destroy_subject_keys(&self, subject: &str) -> Result<Vec<KeyId>, VaultError> {
        let response: DestroySubjectResponse = self
            .post(
                "v1/subjects/destroy",
                &SubjectRequest {
                    subject: subject.into(),
                },
            )
            .await?;
        Ok(response.destroyed)
    }

    async fn destroy_stream_key(&self, stream: &str) -> Result<Option<KeyId>, VaultError> {
        let response: DestroyStreamResponse = self
            .post("v1/streams/destroy", &StreamRequest { stream: stream.into() })
            .await?;
        Ok(response.destroyed)
    }

    async fn stats(&self) -> Result<VaultStats, VaultError> {
        self.get("v1/stats").await
    }

    async fn kek_epochs(&self) -> Result<Vec<EpochInfo>, VaultError> {
        let response: EpochsResponse = self.get("v1/kek/epochs").await?;
        Ok(response.epochs)
    }

    async fn health(&self) -> Result<(), VaultError> {
        let _: serde_json::Value = self.get("v1/health").await?;
        Ok(())
    }
}
