//! Assembles a running node from its parts: the locked store, the libp2p network, the mempool,
//! the HTTP API (and a separate metrics listener) and the consensus driver. The binary's `start`
//! and the in-process cluster tests both use [`start`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::api::{ApiState, NodeStatus, RegistrationFn, SharedStatus, router};
use crate::chain::ChainView;
use crate::disk_quota::DiskQuota;
use crate::driver::{Driver, DriverConfig, DriverError, DriverParts};
use crate::mempool::{Mempool, MempoolConfig};
use crate::metrics::Metrics;
use crate::net::{self, NetConfig, NetError};
use crate::pruner::{Pruner, PrunerConfig};
use crate::serve::{Gate, ServeConfig, Server};
use crate::storage::{StorageError, Store};
use crate::tap::OutboundTap;

/// Builds a tap once the node's identity and cluster are known (its key, chain id, contract).
pub type TapFactory = Arc<dyn Fn(&DriverConfig) -> Arc<dyn OutboundTap> + Send + Sync>;

/// Everything needed to start a node.
pub struct NodeParams {
    /// The consensus driver's settings (identity, cluster, members, timeouts).
    pub driver: DriverConfig,
    /// The data directory (locked while the node runs).
    pub data_dir: PathBuf,
    /// libp2p listen addresses.
    pub p2p_listen: Vec<Multiaddr>,
    /// Extra peers to dial.
    pub bootstrap: Vec<Multiaddr>,
    /// Where the HTTP API listens.
    pub api_listen: SocketAddr,
    /// Where `/metrics` listens besides the API (None: only on the API).
    pub metrics_listen: Option<SocketAddr>,
    /// Mempool limits.
    pub mempool: MempoolConfig,
    /// Committed heights kept on disk (0: all), see `storage.retain_heights`.
    pub retain_heights: u64,
    /// The data directory's disk quota in bytes (0: none), see `storage.max_disk_bytes`.
    pub max_disk_bytes: u64,
    /// Bytes per second read from members' batch streams, shared by power (0: unlimited), see
    /// `mempool.peer_batch_bytes_per_sec`.
    pub batch_intake_bytes_per_sec: u64,
    /// Budgets and workers for serving other nodes' batch, block and sync requests.
    pub serve: ServeConfig,
    /// The `/registration` payload builder.
    pub registration: Option<RegistrationFn>,
    /// A fault-injection hook for test binaries; `None` for an operator's node.
    pub tap: Option<TapFactory>,
    /// The chain for live membership (`None`: the genesis set for good).
    pub chain: Option<Arc<dyn ChainView>>,
}

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store could not be opened.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The network could not start.
    #[error("network: {0}")]
    Net(#[from] NetError),
    /// An HTTP listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The driver failed.
    #[error("consensus driver: {0}")]
    Driver(#[from] DriverError),
    /// The driver task panicked (a bug): the process must exit with a failure so that a
    /// supervisor restarts it.
    #[error("consensus driver panicked: {0}")]
    DriverPanicked(String),
    /// The driver did not finish its last step within the shutdown grace period.
    #[error("consensus driver did not stop within {0:?}")]
    ShutdownTimeout(Duration),
    /// The request server's threads could not start.
    #[error("request server: {0}")]
    Serve(std::io::Error),
}

/// How long `stop` waits for the driver to finish its current step.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The driver task's outcome as a node result: a panic or a cancellation is an error, never a
/// clean stop.
fn driver_outcome(
    joined: Result<Result<(), DriverError>, tokio::task::JoinError>,
) -> Result<(), NodeError> {
    match joined {
        Ok(r) => r.map_err(NodeError::from),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-text panic payload".to_owned());
            tracing::error!(cause = %text, "consensus driver panicked");
            Err(NodeError::DriverPanicked(text))
        }
        Err(_) => Err(NodeError::DriverPanicked(
            "driver task cancelled".to_owned(),
        )),
    }
}

/// A node running in this process.
pub struct RunningNode {
    /// Where the API listens (port resolved).
    pub api_addr: SocketAddr,
    /// Where metrics listen, if separately.
    pub metrics_addr: Option<SocketAddr>,
    /// The node's PeerId.
    pub peer_id: PeerId,
    /// The p2p listen addresses (ports resolved).
    pub listen_addrs: Vec<Multiaddr>,
    /// The published status.
    pub status: SharedStatus,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    driver: JoinHandle<Result<(), DriverError>>,
    servers: Vec<JoinHandle<()>>,
    /// Stopped and joined when the node is dropped, stopped or killed.
    pruner: Pruner,
    /// Answers other nodes' requests until dropped.
    _requests: Server,
}

impl RunningNode {
    /// Stops accepting requests, lets the driver finish its current step (everything it wrote is
    /// durable) and waits for it.
    pub async fn stop(self) -> Result<(), NodeError> {
        let _ = self.shutdown.send(true);
        for s in &self.servers {
            s.abort();
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, self.driver).await {
            Ok(joined) => driver_outcome(joined),
            Err(_) => {
                tracing::error!(grace = ?SHUTDOWN_GRACE, "consensus driver did not stop in time");
                Err(NodeError::ShutdownTimeout(SHUTDOWN_GRACE))
            }
        }
    }

    /// Waits until the driver stops by itself (an error, or the network stopping).
    pub async fn wait(&mut self) -> Result<(), NodeError> {
        driver_outcome((&mut self.driver).await)
    }

    /// Stops without any shutdown step (in-process crash for tests): the tasks are aborted.
    pub fn kill(self) {
        self.driver.abort();
        for s in &self.servers {
            s.abort();
        }
        drop(self.pruner);
    }
}

async fn serve(
    addr: SocketAddr,
    app: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), NodeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| NodeError::Listen { addr, source })?;
    let h = tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "HTTP server stopped");
        }
    });
    Ok((local, h))
}

/// Starts a node: store, network, API, metrics and driver.
pub async fn start(p: NodeParams) -> Result<RunningNode, NodeError> {
    let store = Store::open(&p.data_dir)?;
    let tap = p.tap.as_ref().map(|make| make(&p.driver));
    let oracle_metrics = p.chain.as_ref().and_then(|c| c.oracle_metrics());
    let metrics = Arc::new(Metrics::with_oracle(oracle_metrics.unwrap_or_default()));
    let mut ncfg = NetConfig::new(
        p.driver.secret,
        p.driver.chain_id,
        &hex::encode(p.driver.contract),
    );
    ncfg.listen = p.p2p_listen.clone();
    ncfg.bootstrap = p.bootstrap.clone();
    ncfg.request_timeout = Duration::from_secs(5);
    ncfg.heartbeat = Duration::from_millis(200);
    ncfg.batch_bytes_per_sec = p.batch_intake_bytes_per_sec;
    let gate = Gate::new(&p.serve);
    let (net, events) = net::spawn(ncfg, metrics.clone(), gate.clone()).await?;
    let status: SharedStatus = Arc::new(RwLock::new(NodeStatus::default()));
    let requests = Server::start(&gate, store.clone(), status.clone(), net.clone())
        .map_err(NodeError::Serve)?;
    let quota = Arc::new(DiskQuota::new(p.max_disk_bytes));
    let mempool = Arc::new(Mutex::new(
        Mempool::new(p.mempool.clone()).with_disk_quota(quota.clone()),
    ));
    let wake = Arc::new(Notify::new());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (durable_tx, durable_rx) = watch::channel(0u64);
    let api_state = ApiState {
        status: status.clone(),
        store: store.clone(),
        mempool: mempool.clone(),
        mempool_wake: wake.clone(),
        metrics: metrics.clone(),
        registration: p.registration.clone(),
        durable: Some(durable_rx),
    };
    let driver = Driver::new(
        p.driver,
        DriverParts {
            store: store.clone(),
            net: net.clone(),
            mempool: mempool.clone(),
            mempool_wake: wake,
            status: status.clone(),
            metrics: metrics.clone(),
            tap,
            durable: durable_tx,
            chain: p.chain.clone(),
        },
    )?;
    // After the driver took back its local batches: they are in the mempool, so pinned.
    let pruner = Pruner::spawn(
        store.clone(),
        p.data_dir.clone(),
        mempool,
        PrunerConfig {
            retain_heights: p.retain_heights,
            interval: PRUNE_INTERVAL,
        },
        quota,
        metrics.clone(),
    );
    let (api_addr, api_task) =
        serve(p.api_listen, router(api_state.clone()), shutdown_rx.clone()).await?;
    let mut servers = vec![api_task];
    let mut metrics_addr = None;
    if let Some(addr) = p.metrics_listen
        && addr != p.api_listen
    {
        let app = crate::api::metrics_router(api_state);
        let (a, t) = serve(addr, app, shutdown_rx.clone()).await?;
        metrics_addr = Some(a);
        servers.push(t);
    }
    let peer_id = net.local_peer_id;
    let listen_addrs = net.listen_addrs.clone();
    let driver = tokio::spawn(driver.run(events, shutdown_rx));
    Ok(RunningNode {
        api_addr,
        metrics_addr,
        peer_id,
        listen_addrs,
        status,
        metrics,
        shutdown,
        driver,
        servers,
        pruner,
        _requests: requests,
    })
}

/// Time between pruning passes: the disk quota is measured this often too.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_driver_is_an_error_not_a_clean_stop() {
        let panicked = tokio::spawn(async {
            if std::hint::black_box(true) {
                panic!("round overflow");
            }
            Ok::<(), DriverError>(())
        })
        .await;
        match driver_outcome(panicked) {
            Err(NodeError::DriverPanicked(cause)) => assert!(cause.contains("round overflow")),
            other => panic!("expected DriverPanicked, got {other:?}"),
        }
        let clean = tokio::spawn(async { Ok::<(), DriverError>(()) }).await;
        assert!(driver_outcome(clean).is_ok());
        let cancelled = tokio::spawn(std::future::pending::<Result<(), DriverError>>());
        cancelled.abort();
        assert!(matches!(
            driver_outcome(cancelled.await),
            Err(NodeError::DriverPanicked(_))
        ));
    }
}
