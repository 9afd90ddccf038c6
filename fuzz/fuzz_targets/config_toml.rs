//! `config.toml` with environment and `--set` overrides, as `Config::load` reads them: the
//! fuzz input is the file, then override lines (`KEY=value` for the environment when the key
//! starts with `DSTACK_NODE_`, `section.key=value` for `--set`). A loaded config must render to
//! a file that loads back to the same config.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use node::config::{Config, ENV_PREFIX, render};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, overrides) = text.split_once("\n#--\n").unwrap_or((text, ""));
    let mut env = Vec::new();
    let mut sets = Vec::new();
    for line in overrides.lines().take(8) {
        if line.starts_with(ENV_PREFIX) {
            if let Some((k, v)) = line.split_once('=') {
                env.push((k.to_owned(), v.to_owned()));
            }
        } else {
            sets.push(line.to_owned());
        }
    }
    let path = Path::new("config.toml");
    if let Ok(cfg) = Config::parse(path, file, env, &sets) {
        let again =
            Config::parse(path, &render(&cfg), Vec::new(), &[]).expect("a rendered config loads");
        assert_eq!(again, cfg);
    }
});
