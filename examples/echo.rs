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
    // JSON logs on Managed Instances (AWS_LAMBDA_LOG_FORMAT), each tagged with its
    // invocation's request id. Needs the `logging` feature.
    lambda_tpc::logging::init()?;
    lambda_tpc::compio::run_concurrent(|event: LambdaEvent<Value>| async move {
        tracing::debug!("echoing");
        Ok::<_, BoxError>(event.payload)
    })
}
