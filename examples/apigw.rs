//! An API Gateway HTTP API function (payload format 2.0) on the thread-per-core runtime,
//! with the event types of [`aws_lambda_events`] (the same crate the official runtime's
//! users use).
//!
//! `GET /hello/{name}` or `GET /hello?name=...` answers
//! `{"greeting":"hello, NAME","path":"/hello/NAME","requestId":"..."}` with status 200,
//! `content-type: application/json`, `cache-control: no-store` and `x-api-request-id` (API
//! Gateway's own request id, from the event). A name longer than [`MAX_NAME_CHARS`]
//! characters or with control characters gets a 400 with `{"error":"..."}`.
//!
//! ```text
//! AWS_LAMBDA_RUNTIME_API=127.0.0.1:9001 AWS_LAMBDA_MAX_CONCURRENCY=16 cargo run --release --example apigw
//! ```
//!
//! `tests/aws_events.rs` runs [`handler`] against the embedded simulator with API Gateway
//! events shaped like AWS's samples.

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use aws_lambda_events::http::{HeaderMap, HeaderName, HeaderValue};
use lambda_tpc::{BoxError, LambdaEvent};
use serde_json::json;

/// Longest name greeted.
pub const MAX_NAME_CHARS: usize = 64;

/// The response header carrying API Gateway's request id.
pub const API_REQUEST_ID_HEADER: &str = "x-api-request-id";

fn main() -> Result<(), lambda_tpc::Error> {
    // JSON logs (AWS_LAMBDA_LOG_FORMAT=JSON, or on Managed Instances), each line tagged with
    // its invocation's request id.
    lambda_tpc::logging::init()?;
    lambda_tpc::compio::run_concurrent(handler)
}

/// The function: one API Gateway request in, one HTTP response out.
pub async fn handler(
    event: LambdaEvent<ApiGatewayV2httpRequest>,
) -> Result<ApiGatewayV2httpResponse, BoxError> {
    let (request, context) = event.into_parts();
    let response = respond(&request, context.request_id());
    tracing::info!(
        method = %request.request_context.http.method,
        path = request.raw_path.as_deref().unwrap_or("/"),
        status = response.status_code,
        "answered"
    );
    Ok(response)
}

/// The response to `request`. `request_id` is the Lambda invocation's id.
pub fn respond(request: &ApiGatewayV2httpRequest, request_id: &str) -> ApiGatewayV2httpResponse {
    let name = request
        .query_string_parameters
        .first("name")
        .or_else(|| request.path_parameters.get("name").map(String::as_str))
        .unwrap_or("world");
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Header values are checked, not assumed: an id that is not a valid header value is
    // left out rather than failing the invocation.
    if let Some(id) = request
        .request_context
        .request_id
        .as_deref()
        .and_then(|id| HeaderValue::from_str(id).ok())
    {
        headers.insert(HeaderName::from_static(API_REQUEST_ID_HEADER), id);
    }
    let (status, body) = if name.chars().count() > MAX_NAME_CHARS {
        (
            400,
            json!({ "error": format!("name longer than {MAX_NAME_CHARS} characters") }),
        )
    } else if name.chars().any(char::is_control) {
        (400, json!({ "error": "name contains control characters" }))
    } else {
        (
            200,
            json!({
                "greeting": format!("hello, {name}"),
                "path": request.raw_path.as_deref().unwrap_or("/"),
                "requestId": request_id,
            }),
        )
    };
    let mut response = ApiGatewayV2httpResponse::default();
    response.status_code = status;
    response.headers = headers;
    response.body = Some(body.to_string().into());
    response
}
