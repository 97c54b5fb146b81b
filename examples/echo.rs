//! A real `bootstrap`: reads the Lambda environment and echoes each event's payload.
//!
//! Build it for Lambda with `cargo lambda build --release --example echo` (or any
//! `x86_64-unknown-linux-gnu` / `aarch64` release build named `bootstrap`) and deploy it on
//! the `provided.al2023` runtime. Locally, point it at any Runtime API:
//!
//! ```text
//! AWS_LAMBDA_RUNTIME_API=127.0.0.1:9001 AWS_LAMBDA_MAX_CONCURRENCY=16 cargo run --release --example echo
//! ```

use lambda_tpc::{BoxError, LambdaEvent};
use serde_json::Value;

fn main() -> Result<(), lambda_tpc::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    lambda_tpc::compio::run_concurrent(|event: LambdaEvent<Value>| async move {
        Ok::<_, BoxError>(event.payload)
    })
}
