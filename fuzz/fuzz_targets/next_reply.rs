#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lambda_tpc::fuzzing::next_reply(data));
