//! Serving other nodes' batch, block and sync requests: off the consensus task, within budgets.
//!
//! The network task hands each such request to the [`Gate`]. The gate charges it to the
//! requester's budget ([`budget`]: request rate, requests in flight, response bytes; members
//! apart from non-members, and all non-members together in one pool) and queues it in the
//! [`mailbox`], members first. A request over budget, or one the full queue cannot take, is
//! answered at once with an error naming the bound, and counted in
//! `dstack_messages_rejected_total{reason}`.
//!
//! The [`Server`]'s worker threads take queued requests, read the answer from the store (redb
//! takes concurrent readers; the consensus driver never waits for them) and hand it back to the
//! network task, which sends it. A request stays in flight until its response was sent or failed,
//! and its size is charged to the requester's byte budget when it is sent.

pub mod answer;
pub mod budget;
pub(crate) mod mailbox;

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use libp2p::PeerId;
use proto::{ResponseBody, v1};

use crate::api::SharedStatus;
use crate::net::{NetHandle, Responder};
use crate::storage::Store;
pub use answer::MAX_SYNC_BLOCKS;
use budget::{Allowance, Budgets, Class, Limits, Refusal};

use crate::config::ServeSettings;
use mailbox::Mailbox;

/// Jobs queued at most (both classes together). The in-flight budgets bound the queue long
/// before this (every queued job is in flight); it is a backstop, not a tuning knob.
const MAILBOX_CAPACITY: usize = 1024;

/// The server's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    /// The budgets.
    pub limits: Limits,
    /// Worker threads reading the store; non-members' requests may occupy all but one of them
    /// (with one worker, that one).
    pub workers: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeSettings::default().to_config()
    }
}

impl From<ServeConfig> for ServeSettings {
    fn from(c: ServeConfig) -> Self {
        let l = c.limits;
        Self {
            workers: c.workers,
            member_requests_per_sec: l.member.requests_per_sec,
            member_request_burst: l.member.request_burst,
            member_in_flight: l.member.in_flight,
            member_bytes_per_sec: l.member.bytes_per_sec,
            non_member_requests_per_sec: l.non_member.requests_per_sec,
            non_member_request_burst: l.non_member.request_burst,
            non_member_in_flight: l.non_member.in_flight,
            non_member_bytes_per_sec: l.non_member.bytes_per_sec,
            non_member_pool_requests_per_sec: l.non_member_pool.requests_per_sec,
            non_member_pool_request_burst: l.non_member_pool.request_burst,
            non_member_pool_in_flight: l.non_member_pool.in_flight,
            non_member_pool_bytes_per_sec: l.non_member_pool.bytes_per_sec,
            max_non_member_peers: l.max_non_member_peers,
        }
    }
}

/// The server's settings a `[serve]` section describes.
pub trait ToServeConfig {
    /// The server's settings.
    fn to_config(&self) -> ServeConfig;
}

impl ToServeConfig for ServeSettings {
    fn to_config(&self) -> ServeConfig {
        ServeConfig {
            workers: self.workers,
            limits: Limits {
                member: Allowance {
                    requests_per_sec: self.member_requests_per_sec,
                    request_burst: self.member_request_burst,
                    in_flight: self.member_in_flight,
                    bytes_per_sec: self.member_bytes_per_sec,
                },
                non_member: Allowance {
                    requests_per_sec: self.non_member_requests_per_sec,
                    request_burst: self.non_member_request_burst,
                    in_flight: self.non_member_in_flight,
                    bytes_per_sec: self.non_member_bytes_per_sec,
                },
                non_member_pool: Allowance {
                    requests_per_sec: self.non_member_pool_requests_per_sec,
                    request_burst: self.non_member_pool_request_burst,
                    in_flight: self.non_member_pool_in_flight,
                    bytes_per_sec: self.non_member_pool_bytes_per_sec,
                },
                max_non_member_peers: self.max_non_member_peers,
            },
        }
    }
}

/// A request the server answers (votes go to the consensus driver instead).
#[derive(Debug)]
pub enum Ask {
    /// Batches by digest.
    Batches(v1::BatchRequest),
    /// Uncommitted blocks by id.
    Blocks(v1::BlockRequest),
    /// A page of committed blocks.
    Sync(v1::SyncRequest),
}

/// A request's hold on its requester's budget: in flight until dropped, then the bytes it was
/// charged are counted.
pub struct Permit {
    budgets: Arc<Mutex<Budgets>>,
    peer: PeerId,
    class: Class,
    bytes: u64,
}

impl Permit {
    /// Charges the size of the response sent for it.
    pub fn charge(&mut self, bytes: usize) {
        self.bytes = self
            .bytes
            .saturating_add(u64::try_from(bytes).unwrap_or(u64::MAX));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut b = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        b.finish(&self.peer, self.class, self.bytes, Instant::now());
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Permit({}, {:?})", self.peer, self.class)
    }
}

struct Job {
    ask: Ask,
    responder: Responder,
}

/// Where the network task hands requests to serve. Cheap to clone.
#[derive(Clone)]
pub struct Gate {
    budgets: Arc<Mutex<Budgets>>,
    mailbox: Arc<Mailbox<Job>>,
    workers: usize,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

impl Gate {
    /// A gate with no server behind it yet: it refuses everything as busy until a [`Server`]
    /// starts on it.
    pub fn new(cfg: &ServeConfig) -> Self {
        let workers = cfg.workers.max(1);
        Self {
            budgets: Arc::new(Mutex::new(Budgets::new(cfg.limits, Instant::now()))),
            mailbox: Arc::new(Mailbox::new(MAILBOX_CAPACITY, workers - 1)),
            workers,
        }
    }

    /// Charges `ask` to `peer`'s budget and queues it, or gives the responder back with the
    /// bound that refused it (boxed: refusals are the rare path). Cheap: the network task calls
    /// it for every request.
    pub(crate) fn offer(
        &self,
        peer: PeerId,
        from_member: bool,
        ask: Ask,
        responder: Responder,
    ) -> Result<(), Box<(Refusal, Responder)>> {
        let class = if from_member {
            Class::Member
        } else {
            Class::NonMember
        };
        let admitted = self
            .budgets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(peer, class, Instant::now());
        if let Err(r) = admitted {
            return Err(Box::new((r, responder)));
        }
        let permit = Permit {
            budgets: self.budgets.clone(),
            peer,
            class,
            bytes: 0,
        };
        let job = Job {
            ask,
            responder: responder.with_permit(permit),
        };
        self.mailbox
            .push(job, class)
            .map_err(|job| Box::new((Refusal::Busy, job.responder.without_permit())))
    }

    /// Requests waiting for a worker (diagnostics and tests).
    pub fn queued(&self) -> usize {
        self.mailbox.queued()
    }
}

/// The worker threads answering what the gate queues. Dropping it stops them (after the request
/// each is answering) and makes the gate refuse everything as busy.
pub struct Server {
    mailbox: Arc<Mailbox<Job>>,
    _workers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts the gate's workers, reading `store` and answering through `net`; the current
    /// epoch (to know which epoch-change records a requester lacks) comes from `status`.
    pub fn start(
        gate: &Gate,
        store: Store,
        status: SharedStatus,
        net: NetHandle,
    ) -> std::io::Result<Self> {
        // Open before any worker looks: a worker that finds the mailbox closed exits.
        gate.mailbox.open();
        let mut workers = Vec::new();
        for i in 0..gate.workers {
            let worker = Worker {
                mailbox: gate.mailbox.clone(),
                store: store.clone(),
                status: status.clone(),
                net: net.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("serve-{i}"))
                .spawn(move || worker.run());
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    gate.mailbox.close();
                    return Err(e);
                }
            }
        }
        Ok(Self {
            mailbox: gate.mailbox.clone(),
            _workers: workers,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.mailbox.close();
    }
}

struct Worker {
    mailbox: Arc<Mailbox<Job>>,
    store: Store,
    status: SharedStatus,
    net: NetHandle,
}

impl Worker {
    fn run(self) {
        while let Some((job, class)) = self.mailbox.pop() {
            let body = self.answer(job.ask);
            if self.net.respond_blocking(job.responder, body).is_err() {
                tracing::debug!("response not sent: the network task stopped");
            }
            self.mailbox.done(class);
        }
    }

    fn answer(&self, ask: Ask) -> ResponseBody {
        let r = match ask {
            Ask::Batches(req) => answer::batches(&self.store, &req).map(ResponseBody::Batches),
            Ask::Blocks(req) => answer::blocks(&self.store, &req).map(ResponseBody::Blocks),
            Ask::Sync(req) => {
                let epoch = self
                    .status
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .epoch;
                answer::sync(&self.store, epoch, &req).map(ResponseBody::Sync)
            }
        };
        r.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot answer a request");
            ResponseBody::Error(format!("cannot answer: {e}"))
        })
    }
}
