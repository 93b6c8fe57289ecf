//! The JSON shapes of the vault's HTTP API, shared by the server (`server`) and the client
//! ([`crate::HttpVault`]) so that the two cannot drift apart. Key bytes travel base64-encoded in
//! `Zeroizing` strings.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{EpochInfo, KeyId, NewKey};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateRequest<'a> {
    pub keys: Cow<'a, [NewKey]>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct WireKey {
    pub id: KeyId,
    /// Base64 (standard, padded) of the 32 DEK bytes.
    pub key: Zeroizing<String>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct CreateResponse {
    pub keys: Vec<WireKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FetchRequest<'a> {
    pub ids: Cow<'a, [KeyId]>,
}

#[derive(Serialize, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WireStatus {
    Live,
    Destroyed,
    NotFound,
    /// The KEK epoch wrapping the key was destroyed or is missing (`epoch` says which).
    Unreadable,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct WireLookup {
    pub id: KeyId,
    pub status: WireStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Zeroizing<String>>,
    /// The KEK epoch of an `unreadable` key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct FetchResponse {
    pub keys: Vec<WireLookup>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubjectRequest<'a> {
    pub subject: Cow<'a, str>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct DestroySubjectResponse {
    pub destroyed: Vec<KeyId>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamRequest<'a> {
    pub stream: Cow<'a, str>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct DestroyStreamResponse {
    pub destroyed: Option<KeyId>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct EpochsResponse {
    pub epochs: Vec<EpochInfo>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    /// The stream a `key_destroyed`, `key_unreadable` or `subject_mismatch` problem is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The (pseudonymous) subject a `subject_forgotten` problem is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The KEK epoch a `key_unreadable` problem is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
}
