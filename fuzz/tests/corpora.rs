//! Every committed input of every target (the seeds, what libFuzzer kept,
//! each crash it found) replayed through the target on stable: a fixed
//! crash stays fixed.

use std::path::Path;

#[test]
fn every_corpus_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, target) in fuzz::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{name} has no corpus");
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            let replayed = std::panic::catch_unwind(|| target(&data));
            assert!(replayed.is_ok(), "{name} fails on {}", input.display());
        }
        println!("{name}: {} inputs", inputs.len());
    }
}
