//! `dstack-simulator`: the dstack guest-agent API on a Unix socket (and optionally TCP) for
//! local clusters and tests, backed by dstack's `appkeys.json` or by a KMS root key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use k256::ecdsa::SigningKey;
use membership::appkeys::AppKeysFile;
use membership::hexfmt;
use membership::identity::{address_of, compress};
use membership::simulator::Simulator;

/// Command line of the simulator.
#[derive(Debug, Parser)]
#[command(
    name = "dstack-simulator",
    version,
    about = "Simulated dstack guest agent (GetKey, Info, GetQuote, Version)"
)]
struct Args {
    /// Unix socket to serve on (a stale socket file is replaced).
    #[arg(long, env = "DSTACK_SIM_SOCKET")]
    socket: Option<PathBuf>,
    /// Also serve plain HTTP on this TCP address (e.g. 127.0.0.1:8090).
    #[arg(long, env = "DSTACK_SIM_LISTEN")]
    listen: Option<String>,
    /// dstack's appkeys.json: GetKey then answers exactly as the real guest agent with these keys.
    #[arg(long, conflicts_with = "kms_root_key")]
    appkeys: Option<PathBuf>,
    /// The KMS root secret key: 32 bytes hex, or a file holding it; a file that does not exist
    /// yet is created with a freshly generated key (mode 0600).
    #[arg(long, env = "DSTACK_SIM_KMS_ROOT_KEY")]
    kms_root_key: Option<String>,
    /// With --kms-root-key: also write the appkeys.json this KMS would issue to this path.
    #[arg(long, requires = "kms_root_key")]
    write_appkeys: Option<PathBuf>,
    /// The app id (20 bytes hex) reported by Info and signed by the KMS.
    #[arg(long, env = "DSTACK_SIM_APP_ID")]
    app_id: String,
    /// The instance id (hex) reported by Info.
    #[arg(long, env = "DSTACK_SIM_INSTANCE_ID")]
    instance_id: String,
}

fn load_or_create_root(spec: &str) -> Result<SigningKey> {
    if let Ok(bytes) = hexfmt::decode_fixed::<32>("kms root key", spec) {
        return SigningKey::from_slice(&bytes)
            .context("--kms-root-key is not a valid secp256k1 key");
    }
    let path = Path::new(spec);
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading KMS root key file {}", path.display()))?;
        let bytes = hexfmt::decode_fixed::<32>("kms root key file", &text)?;
        return SigningKey::from_slice(&bytes)
            .with_context(|| format!("{} does not hold a valid secp256k1 key", path.display()));
    }
    let key = SigningKey::random(&mut rand::rngs::OsRng);
    write_secret(path, &format!("{}\n", hex::encode(key.to_bytes())))?;
    eprintln!("generated a KMS root key into {}", path.display());
    Ok(key)
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let app_id = hexfmt::decode_fixed::<20>("--app-id", &args.app_id)?;
    membership::kdf::normalize_instance_id(&args.instance_id).context("--instance-id")?;
    let sim = match (&args.appkeys, &args.kms_root_key) {
        (Some(file), None) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let keys = AppKeysFile::parse(&text)?.keys()?;
            println!(
                "app key address: {}",
                address_of(keys.app_key.verifying_key())
            );
            Simulator::from_app_keys(keys, app_id, &args.instance_id)
        }
        (None, Some(spec)) => {
            let root = load_or_create_root(spec)?;
            println!(
                "kms root: address {} public key {}",
                address_of(root.verifying_key()),
                hex::encode(compress(root.verifying_key()))
            );
            if let Some(out) = &args.write_appkeys {
                let file = AppKeysFile::issue(&root, &app_id)?;
                std::fs::write(out, serde_json::to_string_pretty(&file)?)
                    .with_context(|| format!("writing {}", out.display()))?;
            }
            Simulator::from_kms_root(&root, app_id, &args.instance_id)?
        }
        _ => bail!("give exactly one of --appkeys FILE or --kms-root-key <hex32|file>"),
    };
    if args.socket.is_none() && args.listen.is_none() {
        bail!("give --socket PATH and/or --listen ADDR");
    }
    let mut tasks = Vec::new();
    if let Some(path) = &args.socket {
        tasks.push(
            sim.clone()
                .spawn_unix(path)
                .with_context(|| format!("binding {}", path.display()))?,
        );
        println!("listening on unix:{}", path.display());
    }
    if let Some(addr) = &args.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        println!("listening on http://{}", listener.local_addr()?);
        tasks.push(tokio::spawn(sim.clone().serve_tcp(listener)));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    for t in tasks {
        t.abort();
    }
    if let Some(path) = &args.socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
