//! Writes the generated seed corpus of every fuzz target to `fuzz/corpus/<target>/`:
//! `cargo run --example fuzz_seeds --features testing`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("corpus");
    let seeds = raftwal::fuzzing::seed_corpus();
    for seed in &seeds {
        let dir = root.join(seed.target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&seed.name), &seed.bytes)?;
    }
    let total: usize = seeds.iter().map(|s| s.bytes.len()).sum();
    println!("wrote {} seed files ({total} bytes) under {}", seeds.len(), root.display());
    Ok(())
}
