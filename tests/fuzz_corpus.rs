//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/*`) through the same
//! `lambda_tpc::fuzzing` functions the cargo-fuzz targets call, so every seed and every
//! input the fuzzer once found interesting (crashers included, once fixed) is checked on
//! every `cargo test`, without cargo-fuzz or a nightly toolchain.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use lambda_tpc::fuzzing::TARGETS;

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
}

/// The corpus files of one target, sorted, hidden files (libFuzzer's scratch) skipped.
fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = corpus_root().join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_corpus_and_every_corpus_a_target() {
    let mut dirs: Vec<String> = fs::read_dir(corpus_root())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut names: Vec<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    names.sort();
    assert_eq!(dirs, names, "corpus directories vs fuzzing::TARGETS");
    for (name, _) in TARGETS {
        let files = corpus_files(name);
        assert!(!files.is_empty(), "no corpus for {name}");
        let target = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join("fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(
            target.is_file(),
            "no cargo-fuzz target {}",
            target.display()
        );
    }
}

#[test]
fn replay_corpus() {
    let mut failures = Vec::new();
    let mut count = 0;
    // Failures are collected with their file names and reported together below; keep the
    // default hook from printing each one with a backtrace.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for (name, run) in TARGETS {
        for path in corpus_files(name) {
            let data = fs::read(&path).unwrap();
            count += 1;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(&data))) {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failures.push(format!("{}: {message}", path.display()));
            }
        }
    }
    std::panic::set_hook(hook);
    assert!(count > 0, "empty corpus");
    assert!(
        failures.is_empty(),
        "{} of {count} corpus inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
