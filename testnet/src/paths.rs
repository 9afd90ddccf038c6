//! Where things are: the project checkout, the default run directory, and the binaries a run
//! starts (anvil from the npm toolchain; `dstack-node` and `dstack-simulator` next to the running
//! `testnet` executable, or named by environment variables).

use std::path::{Path, PathBuf};

use crate::error::Error;

/// Overrides the anvil binary.
pub const ANVIL_BIN_ENV: &str = "ANVIL_BIN";
/// Overrides the `dstack-node` binary.
pub const NODE_BIN_ENV: &str = "DSTACK_NODE_BIN";
/// Overrides the `dstack-simulator` binary.
pub const SIMULATOR_BIN_ENV: &str = "DSTACK_SIMULATOR_BIN";

/// The file that marks the project root (the committed contract artifact).
const ROOT_MARKER: &str = "contracts/artifacts/DstackMembershipNFT.json";

/// The project checkout: the first ancestor of the working directory holding the contract
/// artifact, else the checkout this binary was built from.
pub fn project_root() -> PathBuf {
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            if dir.join(ROOT_MARKER).is_file() {
                return dir.to_path_buf();
            }
        }
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR"));
    built.parent().unwrap_or(built).to_path_buf()
}

/// The default run directory, `<project>/.run/testnet`.
pub fn default_run_dir() -> PathBuf {
    project_root().join(".run").join("testnet")
}

/// Foundry's npm platform suffix for this machine (`linux-amd64`, `linux-arm64`, ...).
pub fn foundry_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("{}-{arch}", std::env::consts::OS)
}

/// The native anvil binary: `ANVIL_BIN`, else the one npm installed under `contracts/`.
pub fn anvil_bin() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os(ANVIL_BIN_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(Error::Missing(format!(
                "ANVIL_BIN={} does not exist; run `make deps-npm` (or unset ANVIL_BIN)",
                p.display()
            )));
        }
        return Ok(p);
    }
    let p = project_root()
        .join("contracts/node_modules/@foundry-rs")
        .join(format!("anvil-{}", foundry_platform()))
        .join("bin/anvil");
    if !p.is_file() {
        return Err(Error::Missing(format!(
            "anvil not found at {}: run `make deps-npm` (installs the npm Foundry toolchain), \
             or set ANVIL_BIN",
            p.display()
        )));
    }
    Ok(p)
}

/// A workspace binary: the environment variable `env`, else `name` in the directory of the
/// running executable (the same cargo target directory).
pub fn sibling_bin(name: &str, env: &str, build_hint: &str) -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(Error::Missing(format!(
                "{env}={} does not exist",
                p.display()
            )));
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().map_err(crate::error::io("locating the testnet binary"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let p = dir.join(name);
    if !p.is_file() {
        return Err(Error::Missing(format!(
            "{name} not found next to {} and {env} is unset: build it with `{build_hint}`",
            exe.display()
        )));
    }
    Ok(p)
}

/// The `dstack-simulator` binary.
pub fn simulator_bin() -> Result<PathBuf, Error> {
    sibling_bin(
        "dstack-simulator",
        SIMULATOR_BIN_ENV,
        "cargo build --release -p membership --bin dstack-simulator",
    )
}

/// The `dstack-node` binary.
pub fn node_bin() -> Result<PathBuf, Error> {
    sibling_bin(
        "dstack-node",
        NODE_BIN_ENV,
        "cargo build --release -p node --bin dstack-node",
    )
}
