//! Ecosystem fit: API Gateway HTTP API events (`aws_lambda_events`, payload format 2.0)
//! through the runtime, against the simulator; and the README's "Migrating from
//! lambda_runtime" code, compiled here.
//!
//! The handler is `examples/apigw.rs`, included as a module. The events follow the
//! shapes of AWS's samples in `aws_lambda_events`' fixtures (no authorizer, JWT, IAM and
//! Lambda authorizers, mTLS client certificate, cookies, stage variables, a body), with
//! the name to greet in the query string, in a path parameter, in a repeated query
//! parameter (API Gateway joins repeats with commas), or nowhere. The simulator's
//! validator checks every response (status, headers, body) from the raw event JSON,
//! independently of the example's code.

mod common;

#[path = "../examples/apigw.rs"]
#[allow(dead_code)]
mod apigw;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use bytes::Bytes;
use common::{Exec, nz, run_against_sim, run_on};
use lambda_tpc::sim::{EventSource, Simulator};
use lambda_tpc::{Config, Cores};
use serde_json::{Value, json};

/// The authorizer part of each sample shape.
fn authorizer(i: u64) -> Option<Value> {
    match i % 4 {
        0 => None,
        1 => Some(json!({
            "jwt": {
                "claims": { "claim1": "value1", "sub": format!("user-{i}") },
                "scopes": ["scope1", "scope2"]
            }
        })),
        2 => Some(json!({
            "iam": {
                "accessKey": "ARIA2ZJZYVUEREEIHAKY",
                "accountId": "1234567890",
                "callerId": "AROA7ZJZYVRE7C3DUXHH6:CognitoIdentityCredentials",
                "cognitoIdentity": {
                    "amr": ["foo"],
                    "identityId": "us-east-1:3f291106-8703-466b-8f2b-3ecee1ca56ce",
                    "identityPoolId": "us-east-1:4f291106-8703-466b-8f2b-3ecee1ca56ce"
                },
                "principalOrgId": "AwsOrgId",
                "userArn": "arn:aws:iam::1234567890:user/Admin",
                "userId": "AROA2ZJZYVRE7Y3TUXHH6"
            }
        })),
        _ => Some(json!({ "lambda": { "key": "value" } })),
    }
}

/// Where the name is: `(rawPath, rawQueryString, queryStringParameters, pathParameters,
/// routeKey)`.
fn route(i: u64) -> (String, String, Option<Value>, Option<Value>, &'static str) {
    match i % 7 {
        // ?name=...
        0 => (
            "/hello".into(),
            format!("name=user-{i}&lang=en"),
            Some(json!({ "name": format!("user-{i}"), "lang": "en" })),
            None,
            "GET /hello",
        ),
        // /hello/{name}
        1 => (
            format!("/hello/user-{i}"),
            String::new(),
            None,
            Some(json!({ "name": format!("user-{i}") })),
            "GET /hello/{name}",
        ),
        // nobody: "world"
        2 => ("/hello".into(), String::new(), None, None, "GET /hello"),
        // ?name=a&name=b: API Gateway joins repeated parameters with commas
        3 => (
            "/hello".into(),
            format!("name=first-{i}&name=second-{i}"),
            Some(json!({ "name": format!("first-{i},second-{i}") })),
            None,
            "GET /hello",
        ),
        // non-ASCII, in the path, with a query parameter that is not the name
        4 => (
            format!("/hello/Zo%C3%AB-{i}"),
            "parameter1=value1&parameter1=value2&parameter2=value".into(),
            Some(json!({ "parameter1": "value1,value2", "parameter2": "value" })),
            Some(json!({ "name": format!("Zoë-{i}") })),
            "GET /hello/{name}",
        ),
        // too long: 400
        5 => {
            let long = "x".repeat(65 + (i as usize % 10));
            (
                "/hello".into(),
                format!("name={long}"),
                Some(json!({ "name": long })),
                None,
                "GET /hello",
            )
        }
        // a control character: 400
        _ => (
            format!("/hello/bad%07{i}"),
            String::new(),
            None,
            Some(json!({ "name": format!("bad\u{7}{i}") })),
            "GET /hello/{name}",
        ),
    }
}

/// Event `i`: an API Gateway HTTP API request in the shape of AWS's samples.
fn event(i: u64) -> Bytes {
    let (raw_path, raw_query, query, path_params, route_key) = route(i);
    let mut context = json!({
        "accountId": "123456789012",
        "apiId": "aaaaaaaaaa",
        "domainName": "aaaaaaaaaa.execute-api.us-west-2.amazonaws.com",
        "domainPrefix": "aaaaaaaaaa",
        "http": {
            "method": if i.is_multiple_of(2) { "GET" } else { "POST" },
            "path": raw_path,
            "protocol": "HTTP/1.1",
            "sourceIp": "1.2.3.4",
            "userAgent": "curl/7.58.0"
        },
        "requestId": format!("LV7fzho-PHcE{i:04}="),
        "routeKey": route_key,
        "stage": "$default",
        "time": "21/Apr/2020:15:08:21 +0000",
        "timeEpoch": 1587481701067u64 + i
    });
    if let Some(a) = authorizer(i) {
        context["authorizer"] = a;
    }
    if i.is_multiple_of(3) {
        context["authentication"] = json!({
            "clientCert": {
                "clientCertPem": "-----BEGIN CERTIFICATE-----\nMIIEZTCCAk0CAQEwDQ...",
                "issuerDN": "C=US,ST=Washington,L=Seattle,O=Amazon Web Services,OU=Security,CN=My Private CA",
                "serialNumber": "1",
                "subjectDN": "C=US,ST=Washington,L=Seattle,O=Amazon Web Services,OU=Security,CN=My Client",
                "validity": {
                    "notAfter": "Aug  5 00:28:21 2120 GMT",
                    "notBefore": "Aug 29 00:28:21 2020 GMT"
                }
            }
        });
    }
    let mut ev = json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": {
            "accept": "*/*",
            "content-length": "0",
            "host": "aaaaaaaaaa.execute-api.us-west-2.amazonaws.com",
            "user-agent": "curl/7.58.0",
            "x-amzn-trace-id": "Root=1-5e9f0c65-1de4d666d4dd26aced652b6c",
            "x-forwarded-for": "1.2.3.4",
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https"
        },
        "requestContext": context,
        "isBase64Encoded": false
    });
    if let Some(q) = query {
        ev["queryStringParameters"] = q;
    }
    if let Some(p) = path_params {
        ev["pathParameters"] = p;
    }
    if i % 2 == 1 {
        ev["cookies"] = json!(["cookie1", format!("session={i}")]);
        ev["stageVariables"] = json!({ "stageVariable1": "value1" });
        ev["body"] = json!("{\r\n\t\"a\": 1\r\n}");
    }
    Bytes::from(ev.to_string())
}

/// What the validator saw, for the checks after the run.
#[derive(Default)]
struct Seen {
    ok: AtomicU64,
    bad_request: AtomicU64,
    request_ids: Mutex<HashSet<String>>,
    failures: Mutex<Vec<String>>,
}

/// Checks `response` against `event` from the raw JSON; `Err` says what is wrong.
fn check(event: &[u8], response: &[u8], seen: &Seen) -> Result<(), String> {
    let ev: Value = serde_json::from_slice(event).map_err(|e| format!("event: {e}"))?;
    let resp: Value = serde_json::from_slice(response).map_err(|e| format!("response: {e}"))?;
    // The response must also be what API Gateway's payload 2.0 parser reads.
    serde_json::from_slice::<ApiGatewayV2httpResponse>(response)
        .map_err(|e| format!("not an ApiGatewayV2httpResponse: {e}"))?;

    let name = ev["queryStringParameters"]["name"]
        .as_str()
        .and_then(|q| q.split(',').next())
        .or_else(|| ev["pathParameters"]["name"].as_str())
        .unwrap_or("world");
    let valid = name.chars().count() <= 64 && !name.chars().any(char::is_control);
    let expected_status = if valid { 200 } else { 400 };
    if resp["statusCode"] != json!(expected_status) {
        return Err(format!("status {} for name {name:?}", resp["statusCode"]));
    }
    let headers = resp["headers"].as_object().ok_or("no headers object")?;
    let expected_headers = json!({
        "content-type": "application/json",
        "cache-control": "no-store",
        "x-api-request-id": ev["requestContext"]["requestId"],
    });
    if Value::Object(headers.clone()) != expected_headers {
        return Err(format!("headers {headers:?}"));
    }
    if resp["isBase64Encoded"] != json!(false) || resp["cookies"] != json!([]) {
        return Err(format!("isBase64Encoded/cookies: {resp}"));
    }
    let body: Value = serde_json::from_str(resp["body"].as_str().ok_or("no body string")?)
        .map_err(|e| format!("body: {e}"))?;
    if valid {
        let request_id = body["requestId"].as_str().ok_or("no requestId")?;
        // The simulator's ids: 8-4-4-4-12 hex digits.
        let groups: Vec<usize> = request_id.split('-').map(str::len).collect();
        if groups != [8, 4, 4, 4, 12] {
            return Err(format!("request id {request_id:?}"));
        }
        let expected_body = json!({
            "greeting": format!("hello, {name}"),
            "path": ev["rawPath"],
            "requestId": request_id,
        });
        if body != expected_body {
            return Err(format!("body {body}, expected {expected_body}"));
        }
        if let Ok(mut ids) = seen.request_ids.lock()
            && !ids.insert(request_id.to_owned())
        {
            return Err(format!("request id {request_id} answered twice"));
        }
        seen.ok.fetch_add(1, Ordering::Relaxed);
    } else {
        let keys: Vec<&String> = body
            .as_object()
            .ok_or("body not an object")?
            .keys()
            .collect();
        if keys != ["error"] || !body["error"].is_string() {
            return Err(format!("error body {body}"));
        }
        seen.bad_request.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// How many of the first `n` events must get 200 and 400.
fn expected_counts(n: u64) -> (u64, u64) {
    let bad = (0..n).filter(|i| matches!(i % 7, 5 | 6)).count() as u64;
    (n - bad, bad)
}

#[test]
fn sample_events_deserialize_and_get_the_right_response() {
    // The sample shapes parse as `ApiGatewayV2httpRequest`, and `respond` maps each to
    // what the validator expects, without the runtime in between.
    let seen = Seen::default();
    for i in 0..70 {
        let bytes = event(i);
        let request: ApiGatewayV2httpRequest =
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("event {i}: {e}"));
        let id = format!("00000000-0000-4000-8000-{i:012x}");
        let response = serde_json::to_vec(&apigw::respond(&request, &id)).expect("serialize");
        if let Err(e) = check(&bytes, &response, &seen) {
            panic!("event {i}: {e}\n{}", String::from_utf8_lossy(&bytes));
        }
    }
    assert_eq!(
        (seen.ok.into_inner(), seen.bad_request.into_inner()),
        expected_counts(70)
    );
}

#[test]
fn api_gateway_events_through_the_runtime() {
    const N: u64 = 700;
    let cores = core_affinity::get_core_ids()
        .map_or(1, |v| v.len())
        .clamp(1, 4);
    for (exec, cores) in [(Exec::Compio, cores), (Exec::TokioMultiThread, 1)] {
        let what = format!("{exec:?}, {cores} core(s)");
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        let o = run_against_sim(
            Simulator::builder()
                .max_concurrency(16)
                .events(EventSource::from_fn(N, event))
                .validator(move |event, response| match check(event, response, &s) {
                    Ok(()) => true,
                    Err(e) => {
                        if let Ok(mut f) = s.failures.lock() {
                            f.push(e);
                        }
                        false
                    }
                }),
            Config::builder().cores(Cores::Count(nz(cores))),
            move |config| run_on(exec, config, apigw::handler),
        );
        let failures = seen.failures.lock().map(|f| f.clone()).unwrap_or_default();
        assert!(failures.is_empty(), "{what}: {failures:#?}");
        assert!(o.done, "{what}: run did not finish: {:?}", o.ledger);
        assert!(o.result.is_ok(), "{what}: {:?}", o.result);
        let l = &o.ledger;
        assert_eq!(l.handed_out, N, "{what}: {l:?}");
        assert_eq!(l.answered_ok, N, "{what}: {l:?}");
        assert_eq!(l.answered_error, 0, "{what}: {:?}", o.errors);
        assert_eq!(l.mismatched, 0, "{what}: {l:?}");
        assert_eq!(l.lost(), 0, "{what}: {l:?}");
        assert_eq!(l.duplicates, 0, "{what}: {l:?}");
        assert_eq!(l.unknown_ids, 0, "{what}: {l:?}");
        assert_eq!(l.bad_requests, 0, "{what}: {l:?}");
        let (ok, bad) = expected_counts(N);
        assert_eq!(seen.ok.load(Ordering::Relaxed), ok, "{what}");
        assert_eq!(seen.bad_request.load(Ordering::Relaxed), bad, "{what}");
        let ids = seen.request_ids.lock().map(|s| s.len()).unwrap_or(0) as u64;
        assert_eq!(ids, ok, "{what}: every 200 carries its own invocation's id");
    }
}

// The README's "Migrating from lambda_runtime" code, compiled. `readme_code_is_compiled`
// checks that each code block of that section is the body of one of these modules.

#[allow(dead_code)]
mod readme_lambda_runtime {
    use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
    use lambda_runtime::{Error, LambdaEvent, service_fn};

    async fn handler(
        event: LambdaEvent<ApiGatewayV2httpRequest>,
    ) -> Result<ApiGatewayV2httpResponse, Error> {
        let query = &event.payload.query_string_parameters;
        let name = query.first("name").unwrap_or("world");
        tracing::info!(request_id = %event.context.request_id, "greeting {name}");
        let mut response = ApiGatewayV2httpResponse::default();
        response.status_code = 200;
        response.body = Some(format!("hello, {name}").into());
        Ok(response)
    }

    #[tokio::main]
    async fn main() -> Result<(), Error> {
        lambda_runtime::tracing::init_default_subscriber();
        lambda_runtime::run_concurrent(service_fn(handler)).await
    }
}

#[allow(dead_code)]
mod readme_compio {
    use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
    use lambda_tpc::{BoxError, LambdaEvent, service_fn};

    pub async fn handler(
        event: LambdaEvent<ApiGatewayV2httpRequest>,
    ) -> Result<ApiGatewayV2httpResponse, BoxError> {
        let query = &event.payload.query_string_parameters;
        let name = query.first("name").unwrap_or("world");
        tracing::info!(request_id = event.context.request_id(), "greeting {name}");
        let mut response = ApiGatewayV2httpResponse::default();
        response.status_code = 200;
        response.body = Some(format!("hello, {name}").into());
        Ok(response)
    }

    fn main() -> Result<(), lambda_tpc::Error> {
        lambda_tpc::logging::init()?;
        lambda_tpc::compio::run_concurrent(service_fn(handler))
    }
}

#[allow(dead_code)]
mod readme_tokio {
    use super::readme_compio::handler;
    use lambda_tpc::service_fn;
    // README:
    #[tokio::main]
    async fn main() -> Result<(), lambda_tpc::Error> {
        lambda_tpc::logging::init()?;
        lambda_tpc::tokio::run_concurrent(service_fn(handler)).await
    }
}

/// The code blocks of the README's migration section, in order.
fn readme_migration_blocks() -> Vec<String> {
    let readme = include_str!("../README.md");
    let start = readme
        .find("## Migrating from lambda_runtime")
        .expect("README has the migration section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_start().starts_with("```")) {
            (None, true) => current = Some(String::new()),
            (Some(_), true) => blocks.extend(current.take()),
            (Some(block), false) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, false) => {}
        }
    }
    blocks
}

#[test]
fn readme_code_is_compiled() {
    let source = include_str!("aws_events.rs");
    let blocks = readme_migration_blocks();
    assert_eq!(
        blocks.len(),
        3,
        "three code blocks in the migration section"
    );
    for (block, module) in blocks.iter().zip([
        "mod readme_lambda_runtime {\n",
        "mod readme_compio {\n",
        "    // README:\n",
    ]) {
        let start = source.find(module).expect("module") + module.len();
        let body = &source[start..];
        let mut expected = String::new();
        for line in block.lines() {
            if !line.is_empty() {
                expected.push_str("    ");
                expected.push_str(line);
            }
            expected.push('\n');
        }
        let expected = expected.replace("pub async fn handler", "async fn handler");
        let body = body.replace("pub async fn handler", "async fn handler");
        assert!(
            body.starts_with(&expected),
            "README block differs from the compiled code after {module:?}:\n{block}"
        );
    }
}

/// The README's handler, on both lambda-tpc entry points, answers every sample event.
#[test]
fn readme_handler_through_the_runtime() {
    const N: u64 = 140;
    for exec in [Exec::Compio, Exec::TokioMultiThread] {
        let failures = Arc::new(Mutex::new(Vec::new()));
        let f = failures.clone();
        let o = run_against_sim(
            Simulator::builder()
                .max_concurrency(8)
                .events(EventSource::from_fn(N, event))
                .validator(move |event, response| {
                    let ev: Value = serde_json::from_slice(event).unwrap_or_default();
                    let resp: Value = serde_json::from_slice(response).unwrap_or_default();
                    let name = ev["queryStringParameters"]["name"]
                        .as_str()
                        .and_then(|q| q.split(',').next())
                        .unwrap_or("world");
                    let ok = resp["statusCode"] == json!(200)
                        && resp["body"] == json!(format!("hello, {name}"));
                    if !ok && let Ok(mut f) = f.lock() {
                        f.push(resp.to_string());
                    }
                    ok
                }),
            Config::builder(),
            move |config| run_on(exec, config, readme_compio::handler),
        );
        let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
        assert!(failures.is_empty(), "{exec:?}: {failures:#?}");
        assert!(o.done && o.result.is_ok(), "{exec:?}: {:?}", o.result);
        assert_eq!(o.ledger.answered_ok, N, "{exec:?}: {:?}", o.ledger);
        assert_eq!((o.ledger.lost(), o.ledger.mismatched), (0, 0), "{exec:?}");
    }
}
