//! Helpers shared by the examples that run the simulator and the runtime together.
#![allow(dead_code)]

use lambda_tpc::BoxError;

/// The CPUs of the affinity mask split into one for the simulator (the last) and the
/// rest for the runtime; with a single CPU both share it. Also returns the CPU count.
pub fn split_cpus() -> Result<(usize, Vec<usize>, usize), BoxError> {
    let cpus: Vec<usize> = core_affinity::get_core_ids()
        .ok_or("could not read the CPU affinity mask")?
        .into_iter()
        .map(|c| c.id)
        .collect();
    match cpus.split_last() {
        Some((last, rest)) if !rest.is_empty() => Ok((*last, rest.to_vec(), cpus.len())),
        Some((only, _)) => Ok((*only, vec![*only], 1)),
        None => Err("empty affinity mask".into()),
    }
}

/// A JSON event `{"data":"xxx..."}` of about `size` bytes (at least 12), so that an echo
/// round-trips through serde.
pub fn json_payload(size: usize) -> Vec<u8> {
    let mut s = String::from("{\"data\":\"");
    while s.len() + 2 < size.max(12) {
        s.push('x');
    }
    s.push_str("\"}");
    s.into_bytes()
}
