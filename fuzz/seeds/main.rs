//! Writes the seed corpus (`fuzz::seeds`) to `fuzz/corpus/<target>/seed-<n>`, replacing the
//! seeds written before (other files there are left alone). Run from the repository root with
//! `make fuzz-seeds`.

use std::path::Path;

// Built with the fuzz targets' coverage flags, so it links libFuzzer for the coverage hooks.
extern crate libfuzzer_sys;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for seeds in fuzz::seeds::all() {
        let dir = root.join(seeds.target);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"))
            {
                std::fs::remove_file(path)?;
            }
        }
        for (i, input) in seeds.inputs.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), input)?;
        }
        println!("{:<16} {} seeds", seeds.target, seeds.inputs.len());
    }
    Ok(())
}
