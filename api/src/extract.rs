//! Request extractors whose failures are [`ApiError`]s, so that a malformed
//! body or query gets the same problem document as every other error.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. Wire types refuse unknown fields, so the error says which.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        JsonRejection::BytesRejection(inner) if inner.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::BodyTooLarge
        }
        JsonRejection::JsonDataError(error) => {
            let detail = error.body_text();
            let code = if detail.contains("unknown field") { "unknown_field" } else { "malformed_body" };
            ApiError::MalformedBody { code, detail }
        }
        other => ApiError::MalformedBody { code: "malformed_body", detail: other.body_text() },
    }
}

/// A raw body (for routes whose JSON body is optional).
#[derive(Debug)]
pub struct ApiBytes(pub Bytes);

impl<S> FromRequest<S> for ApiBytes
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(request, state).await.map(ApiBytes).map_err(bytes_rejection)
    }
}

fn bytes_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge
    } else {
        ApiError::MalformedBody { code: "malformed_body", detail: rejection.body_text() }
    }
}

/// Parses an optional JSON body: empty means `T::default()`.
pub fn optional_json<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|error| {
        let detail = error.to_string();
        let code = if detail.contains("unknown field") { "unknown_field" } else { "malformed_body" };
        ApiError::MalformedBody { code, detail }
    })
}

/// A query string.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    let detail = rejection.body_text();
    let code = if detail.contains("unknown field") { "unknown_field" } else { "malformed_query" };
    ApiError::MalformedBody { code, detail }
}

/// The `{id}` of a route's path, as text (every path parameter of this API
/// is a UUID named `id`; handlers parse it). One that does not decode
/// (percent-encoded bytes that are not UTF-8) is `invalid_id`, a problem
/// document like any other, not axum's plain-text rejection.
#[derive(Debug)]
pub struct IdPath(pub String);

impl<S> FromRequestParts<S> for IdPath
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(IdPath(id)),
            Err(_) => Err(ApiError::InvalidId { field: "id" }),
        }
    }
}
