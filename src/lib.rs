//! lambda-tpc (work in progress)
#![deny(missing_docs)]
pub mod http;
