//! The admin API: erasure requests, subjects, legal holds, the audit trail, reports, tokens,
//! event schemas, retention policies and reconciliation. Every call needs an `admin` token.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use lethe_wire::{
    AuditListResponse, AuditQueryParams, AuditVerifyResponse, ErasureListResponse, ErasureReportOut, ErasureResponse,
    ErasuresQuery, ExportResponse, ForgetRequest, HealthResponse, HoldOut, HoldRequest, NewTokenOut, ReadinessResponse,
    ReconcileReportOut, ReportQuery, RetentionPolicyIn, RetentionPolicyListResponse, RetentionPolicyOut,
    RetentionSweepOut, SchemaListResponse, SchemaOut, SchemaRequest, SchemaVersionsResponse, SubjectResponse,
    TokenListResponse, TokenRequest,
};
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::client::{NO_QUERY, Repeat, json, segment};
use crate::{Client, Error};

/// What a `PUT` did: created the resource (`201`) or found or replaced it (`200`).
#[derive(Debug, Clone, PartialEq)]
pub struct Put<T> {
    pub value: T,
    pub created: bool,
}

impl Client {
    /// Files an erasure request for everything of `subject` (`POST
    /// /admin/subjects/{subject}/forget`, GDPR Art. 17). Not repeated after a lost answer (a
    /// second request would be filed): look it up with [`Client::erasures`] instead.
    pub async fn forget(&self, subject: &str, request: &ForgetRequest) -> Result<ErasureResponse, Error> {
        let path = format!("/admin/subjects/{}/forget", segment(subject));
        let (_, erasure) = self.send_json(Method::POST, &path, request, Repeat::OnlyUnsent).await?;
        Ok(erasure)
    }

    /// One erasure request (`GET /admin/erasures/{id}`).
    pub async fn erasure(&self, id: Uuid) -> Result<ErasureResponse, Error> {
        self.get(&format!("/admin/erasures/{id}"), NO_QUERY).await
    }

    /// Erasure requests, newest first (`GET /admin/erasures`).
    pub async fn erasures(&self, query: &ErasuresQuery) -> Result<ErasureListResponse, Error> {
        self.get("/admin/erasures", query).await
    }

    /// A subject's bound streams, streams holding its fields, hold and requests.
    pub async fn subject(&self, subject: &str) -> Result<SubjectResponse, Error> {
        self.get(&format!("/admin/subjects/{}", segment(subject)), NO_QUERY)
            .await
    }

    /// The Art. 15/20 export of a subject, read whole.
    pub async fn export(&self, subject: &str) -> Result<ExportResponse, Error> {
        self.get(&format!("/admin/subjects/{}/export", segment(subject)), NO_QUERY)
            .await
    }

    /// The same export as the bytes of its JSON, as they arrive: for writing a large export to
    /// a file without holding it.
    pub async fn export_bytes(&self, subject: &str) -> Result<impl Stream<Item = Result<Bytes, Error>> + use<>, Error> {
        let path = format!("/admin/subjects/{}/export", segment(subject));
        let response = self.execute(Repeat::Safe, || self.streaming_request(&path)).await?;
        let url = self.url(&path);
        Ok(response.bytes_stream().map(move |chunk| {
            chunk.map_err(|source| Error::Unreachable {
                url: url.clone(),
                source,
            })
        }))
    }

    /// Places (or changes) a legal hold: forgetting the subject is refused while it holds.
    pub async fn place_hold(&self, subject: &str, hold: &HoldRequest) -> Result<HoldOut, Error> {
        let path = format!("/admin/subjects/{}/hold", segment(subject));
        let (_, hold) = self.send_json(Method::PUT, &path, hold, Repeat::Safe).await?;
        Ok(hold)
    }

    /// Lifts a subject's legal hold.
    pub async fn lift_hold(&self, subject: &str) -> Result<(), Error> {
        self.delete(&format!("/admin/subjects/{}/hold", segment(subject))).await
    }

    /// A page of the hash-chained audit trail.
    pub async fn audit(&self, query: &AuditQueryParams) -> Result<AuditListResponse, Error> {
        self.get("/admin/audit", query).await
    }

    /// Verifies the audit trail's hash chain.
    pub async fn verify_audit(&self) -> Result<AuditVerifyResponse, Error> {
        self.get("/admin/audit/verify", NO_QUERY).await
    }

    /// The erasure report (`format` in `query` is ignored: see [`Client::erasure_report_csv`]).
    pub async fn erasure_report(&self, query: &ReportQuery) -> Result<ErasureReportOut, Error> {
        let query = ReportQuery {
            format: None,
            from: query.from,
            to: query.to,
        };
        self.get("/admin/reports/erasures", &query).await
    }

    /// The erasure report as CSV.
    pub async fn erasure_report_csv(&self, query: &ReportQuery) -> Result<String, Error> {
        let query = ReportQuery {
            format: Some("csv".to_owned()),
            from: query.from,
            to: query.to,
        };
        let response = self
            .execute(Repeat::Safe, || {
                self.request(Method::GET, "/admin/reports/erasures").query(&query)
            })
            .await?;
        let status = response.status().as_u16();
        response.text().await.map_err(|e| Error::Unexpected {
            status,
            detail: format!("the report was cut off: {e}"),
        })
    }

    /// Re-applies erasures a restored database or vault lost (`POST /admin/reconcile`).
    pub async fn reconcile(&self) -> Result<ReconcileReportOut, Error> {
        let (_, report) = self
            .send_json(Method::POST, "/admin/reconcile", &json!({}), Repeat::Safe)
            .await?;
        Ok(report)
    }

    /// Creates an API token; its secret is in the answer only. Not repeated after a lost answer
    /// (a second token would be created).
    pub async fn create_token(&self, token: &TokenRequest) -> Result<NewTokenOut, Error> {
        let (_, token) = self
            .send_json(Method::POST, "/admin/tokens", token, Repeat::OnlyUnsent)
            .await?;
        Ok(token)
    }

    /// Every token (never their secrets).
    pub async fn tokens(&self) -> Result<TokenListResponse, Error> {
        self.get("/admin/tokens", NO_QUERY).await
    }

    /// Revokes a token.
    pub async fn revoke_token(&self, id: Uuid) -> Result<(), Error> {
        self.delete(&format!("/admin/tokens/{id}")).await
    }

    /// Registers the next version of an event type's schema (`PUT /schemas/{type}`); the same
    /// schema again is found, not registered twice.
    pub async fn put_schema(&self, event_type: &str, schema: &SchemaRequest) -> Result<Put<SchemaOut>, Error> {
        let path = format!("/schemas/{}", segment(event_type));
        let (status, value) = self.send_json(Method::PUT, &path, schema, Repeat::Safe).await?;
        Ok(Put {
            value,
            created: status == StatusCode::CREATED,
        })
    }

    /// The latest schema of every event type that has one.
    pub async fn schemas(&self) -> Result<SchemaListResponse, Error> {
        self.get("/schemas", NO_QUERY).await
    }

    /// Every version of an event type's schema.
    pub async fn schema_versions(&self, event_type: &str) -> Result<SchemaVersionsResponse, Error> {
        self.get(&format!("/schemas/{}", segment(event_type)), NO_QUERY).await
    }

    /// Creates or replaces a retention policy.
    pub async fn put_retention_policy(
        &self,
        name: &str,
        policy: &RetentionPolicyIn,
    ) -> Result<Put<RetentionPolicyOut>, Error> {
        let path = format!("/admin/retention/{}", segment(name));
        let (status, value) = self.send_json(Method::PUT, &path, policy, Repeat::Safe).await?;
        Ok(Put {
            value,
            created: status == StatusCode::CREATED,
        })
    }

    /// One retention policy, with when it next files a request.
    pub async fn retention_policy(&self, name: &str) -> Result<RetentionPolicyOut, Error> {
        self.get(&format!("/admin/retention/{}", segment(name)), NO_QUERY).await
    }

    /// Every retention policy.
    pub async fn retention_policies(&self) -> Result<RetentionPolicyListResponse, Error> {
        self.get("/admin/retention", NO_QUERY).await
    }

    /// Removes a retention policy.
    pub async fn delete_retention_policy(&self, name: &str) -> Result<(), Error> {
        self.delete(&format!("/admin/retention/{}", segment(name))).await
    }

    /// Runs the retention sweep now (it also runs on its own schedule); repeating it files
    /// nothing twice.
    pub async fn sweep_retention(&self) -> Result<RetentionSweepOut, Error> {
        let (_, sweep) = self
            .send_json(Method::POST, "/admin/retention-sweep", &json!({}), Repeat::Safe)
            .await?;
        Ok(sweep)
    }

    /// Liveness (`GET /healthz`).
    pub async fn health(&self) -> Result<HealthResponse, Error> {
        self.get("/healthz", NO_QUERY).await
    }

    /// Readiness (`GET /readyz`): the answer also when not ready (`503`), with each dependency.
    pub async fn readiness(&self) -> Result<ReadinessResponse, Error> {
        let response = self
            .request(Method::GET, "/readyz")
            .send()
            .await
            .map_err(|source| Error::Unreachable {
                url: self.url("/readyz"),
                source,
            })?;
        json(response).await
    }
}
