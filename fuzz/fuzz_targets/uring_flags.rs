#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lambda_tpc::fuzzing::uring_flags(data));
