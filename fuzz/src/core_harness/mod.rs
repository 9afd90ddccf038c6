//! A structure-aware driver of one `consensus::core::Core` in a real 4-member cluster.
//!
//! The fuzz input picks the cluster's shape (powers, signature scheme), which member the core
//! is, its buffer sizes, and a sequence of [`Step`]s. The harness plays every other party: it
//! holds all the cluster's real keys, so it can send validly signed proposals, votes, timeouts,
//! certificates and epoch-change records that reach the core's deep paths, and it sends forged,
//! tampered, stale and far-future ones (rounds near `u64::MAX`) beside them. It answers the
//! core's requests (payloads, batches, blocks, chain sets) when a step says so, and learns from
//! what the core broadcasts, persists and commits.
//!
//! After every event it checks what must hold whatever the other parties do: the core does not
//! panic, its safety state never goes backwards (epoch first, then last voted round, highest
//! timeout round and one-chain round), the `PersistSafety` states it returns are monotone the
//! same way, its epoch never decreases, it never signs two different votes or proposals for
//! one round, and committed heights follow each other (within an epoch).

use std::collections::HashMap;

use arbitrary::Arbitrary;
use consensus::core::{Action, Config, Core, DurableState, Event};
use consensus::crypto::{Scheme, Signer};
use consensus::domain::validator_set_hash;
use consensus::epoch::EpochChangeRecord;
use consensus::safety::SafetyState;
use consensus::testkit::{self, Cluster};
use consensus::types::{
    Address, BatchDigest, Block, BlockId, MemberInfo, Message, Proposal, QuorumCert, Reconfigure,
    Signature, SignerBitmap, Timeout, TimeoutCert, Vote,
};
use consensus::verify::EpochContext;

mod input;
mod steps;

pub use input::*;

/// The cluster shapes an input can pick: powers and scheme. Equal powers let any three members
/// form a quorum without the core; 1,1,2,3 (the testnet's) makes some quorums need the core.
const SHAPES: [(&[u64], Scheme); 4] = [
    (&[1, 1, 1, 1], Scheme::Fast),
    (&[1, 1, 2, 3], Scheme::Fast),
    (&[1, 1, 1, 1], Scheme::Secp256k1),
    (&[1, 1, 2, 3], Scheme::Secp256k1),
];

/// Seed of the key that belongs to no member.
const OUTSIDER_SEED: u64 = 9_999;
/// Most steps run from one input (each may deliver several events).
const MAX_STEPS: usize = 96;
/// Most blocks, certificates and messages the harness remembers.
const MAX_KNOWN: usize = 128;

/// What the harness found wrong (the fuzz target panics with it).
#[derive(Debug)]
pub struct Violation(pub String);

/// The harness: the core, the cluster's keys, and what it has seen.
struct Harness<'c> {
    cluster: &'c Cluster,
    outsider: Box<dyn Signer>,
    core: Core,
    me: Address,
    /// The harness's view of the current epoch (follows the core's records).
    ctx: EpochContext,
    now_ms: u64,
    blocks: Vec<Block>,
    qcs: Vec<QuorumCert>,
    tcs: Vec<TimeoutCert>,
    sent: Vec<Message>,
    records: Vec<EpochChangeRecord>,
    last_payload_round: Option<u64>,
    last_batches: Option<BlockId>,
    last_fetch: Option<BlockId>,
    last_chain_read: Option<(u64, [u8; 32])>,
    pinned: Option<(u64, [u8; 32], Vec<MemberInfo>)>,
    /// What the core signed: (epoch, round) → block id, for votes and proposals.
    my_votes: HashMap<(u64, u64), BlockId>,
    my_proposals: HashMap<(u64, u64), BlockId>,
    persisted: SafetyState,
    observed: SafetyState,
    epoch: u64,
    committed_height: Option<u64>,
    /// An epoch change since the last commit.
    epoch_changed: bool,
}

fn fresh_ctx(c: &EpochContext) -> EpochContext {
    EpochContext::new(
        c.epoch(),
        c.genesis_block(),
        c.set().clone(),
        c.domain().clone(),
        c.scheme(),
    )
    .with_chain_block(c.chain_block())
}

fn config(small: bool) -> Config {
    if small {
        Config {
            round_window: 8,
            max_pending_blocks: 12,
            max_buffered_proposals: 2,
            max_fetch_blocks: 8,
            max_wanted: 2,
            max_orphans: 4,
            max_payload_batches: 4,
            epoch_min_rounds: 2,
            ..Config::default()
        }
    } else {
        Config {
            epoch_min_rounds: 4,
            ..Config::default()
        }
    }
}

/// `(a, b, c, d)` lexicographically: the order in which a safety state may only grow.
fn safety_key(s: &SafetyState) -> (u64, u64, u64, u64) {
    (
        s.epoch,
        s.last_voted_round,
        s.highest_timeout_round,
        s.one_chain_round,
    )
}

/// Whether `next` is not behind `prev`: a later epoch, or the same epoch with none of the
/// rounds lower.
fn not_behind(prev: &SafetyState, next: &SafetyState) -> bool {
    if next.epoch != prev.epoch {
        return next.epoch > prev.epoch;
    }
    next.last_voted_round >= prev.last_voted_round
        && next.highest_timeout_round >= prev.highest_timeout_round
        && next.one_chain_round >= prev.one_chain_round
}

/// Whether `CORE_HARNESS_TRACE` is set: each event and action is then printed (shortened unless
/// it is `full`), to read how a failing input reached its violation.
fn tracing_on() -> bool {
    trace_mode().is_some()
}

fn trace_mode() -> Option<bool> {
    static MODE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| {
        std::env::var("CORE_HARNESS_TRACE")
            .ok()
            .map(|v| v == "full")
    })
}

/// A value's debug form, shortened unless the trace is `full`.
fn brief(x: &impl std::fmt::Debug) -> String {
    let mut s = format!("{x:?}");
    if trace_mode() != Some(true) && s.len() > 400 {
        let mut end = 400;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(" ...");
    }
    s
}

fn push_bounded<T>(v: &mut Vec<T>, x: T) {
    if v.len() >= MAX_KNOWN {
        v.remove(0);
    }
    v.push(x);
}

fn pick<T: Clone>(v: &[T], i: u8) -> Option<T> {
    (!v.is_empty()).then(|| v[i as usize % v.len()].clone())
}

/// A signer bitmap from raw bytes (at most 256 bits), as a peer could send it.
fn bitmap(bytes: &[u8]) -> SignerBitmap {
    let mut b = SignerBitmap::new(bytes.len().min(32) * 8);
    for (i, byte) in bytes.iter().take(32).enumerate() {
        for bit in 0..8 {
            if byte & (1 << bit) != 0 {
                b.set(i * 8 + bit);
            }
        }
    }
    b
}

fn digests(n: u8, salt: u64) -> Vec<BatchDigest> {
    (0..n % 8)
        .map(|i| {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&salt.to_le_bytes());
            d[8] = i;
            BatchDigest(d)
        })
        .collect()
}

impl<'c> Harness<'c> {
    fn new(cluster: &'c Cluster, me: usize, small: bool) -> Result<Self, Violation> {
        let ctx = fresh_ctx(&cluster.ctx);
        let core_ctx = fresh_ctx(&cluster.ctx);
        let durable = DurableState {
            safety: SafetyState::new(ctx.epoch()),
            ..DurableState::default()
        };
        let core = Core::new(config(small), core_ctx, cluster.signer_of(me), durable)
            .map_err(|e| Violation(format!("core does not start: {e}")))?;
        let observed = core.safety_state().clone();
        Ok(Self {
            cluster,
            outsider: testkit::signer(cluster.ctx.scheme(), OUTSIDER_SEED),
            me: core.address(),
            core,
            qcs: vec![ctx.genesis_qc()],
            ctx,
            now_ms: 0,
            blocks: Vec::new(),
            tcs: Vec::new(),
            sent: Vec::new(),
            records: Vec::new(),
            last_payload_round: None,
            last_batches: None,
            last_fetch: None,
            last_chain_read: None,
            pinned: None,
            my_votes: HashMap::new(),
            my_proposals: HashMap::new(),
            persisted: observed.clone(),
            observed,
            epoch: 0,
            committed_height: None,
            epoch_changed: false,
        })
    }

    // ----- keys and selectors -----

    fn signer_of(&self, a: &Address) -> Option<&dyn Signer> {
        self.cluster
            .signers
            .iter()
            .find(|s| s.address() == *a)
            .map(|s| s.as_ref())
    }

    /// The address of member `i % n` of the current set.
    fn member(&self, i: u8) -> Address {
        let set = self.ctx.set();
        set.members()[i as usize % set.len()].address
    }

    /// The claimed signer and the key that really signs.
    fn who(&self, w: Who) -> (Address, &dyn Signer) {
        match w {
            Who::Member(i) => {
                let a = self.member(i);
                (a, self.signer_of(&a).unwrap_or(self.outsider.as_ref()))
            }
            Who::Outsider => (self.outsider.address(), self.outsider.as_ref()),
            Who::Forged(i) => (self.member(i), self.outsider.as_ref()),
        }
    }

    fn round(&self, r: RoundSel) -> u64 {
        let cur = self.core.round();
        match r {
            RoundSel::Current(d) => cur.saturating_add_signed(i64::from(d)),
            RoundSel::Ahead(d) => cur.saturating_add(u64::from(d)),
            RoundSel::NearMax(k) => u64::MAX - u64::from(k),
            RoundSel::Exact(r) => r,
        }
    }

    fn epoch_of(&self, e: EpochSel) -> u64 {
        let cur = self.ctx.epoch();
        match e {
            EpochSel::Current => cur,
            EpochSel::Previous => cur.saturating_sub(1),
            EpochSel::Next => cur.saturating_add(1),
            EpochSel::Exact(e) => e,
        }
    }

    fn members_of(&self, spec: SetSpec) -> Vec<MemberInfo> {
        let mut out: Vec<MemberInfo> = self
            .cluster
            .signers
            .iter()
            .zip(spec.powers)
            .filter(|(_, p)| p % 4 != 0)
            .map(|(s, p)| MemberInfo {
                address: s.address(),
                public_key: s.public_key(),
                power: u64::from(p % 4),
            })
            .collect();
        out.sort_by_key(|m| m.address);
        out
    }

    fn reconfigure(&self, members: Vec<MemberInfo>) -> Reconfigure {
        let (number, hash) = self
            .pinned
            .as_ref()
            .map_or((1, [7; 32]), |(n, h, _)| (*n, *h));
        Reconfigure {
            chain_block_number: number,
            chain_block_hash: hash,
            validator_set_hash: validator_set_hash(&members),
            members,
        }
    }

    fn highest_qc(&self) -> QuorumCert {
        self.qcs
            .iter()
            .filter(|q| q.epoch == self.ctx.epoch())
            .max_by_key(|q| q.round)
            .cloned()
            .unwrap_or_else(|| self.ctx.genesis_qc())
    }

    fn known_qc(&self, i: u8) -> QuorumCert {
        pick(&self.qcs, i).unwrap_or_else(|| self.ctx.genesis_qc())
    }

    // ----- signing (in the harness's current epoch context) -----

    fn vote(&self, signer: (Address, &dyn Signer), epoch: u64, round: u64, id: BlockId) -> Vote {
        let d = self.ctx.domain().vote_digest(epoch, round, &id);
        Vote {
            epoch,
            round,
            block_id: id,
            signer: signer.0,
            signature: signer.1.sign(&d),
        }
    }

    /// Set indices of the members in a bitmask (all if it selects none).
    fn indices(&self, mask: u8) -> Vec<usize> {
        let n = self.ctx.set().len();
        let v: Vec<usize> = (0..n).filter(|i| mask & (1 << (i % 8)) != 0).collect();
        if v.is_empty() { (0..n).collect() } else { v }
    }

    /// The signer bitmap and signatures of the members at `who` (set indices) on `digest`.
    fn signed_by(&self, digest: &[u8; 32], who: &[usize]) -> (SignerBitmap, Vec<Signature>) {
        let set = self.ctx.set();
        let mut signers = SignerBitmap::new(set.len());
        let mut signatures = Vec::new();
        for &i in who {
            if let Some(s) = self.signer_of(&set.members()[i].address) {
                signers.set(i);
                signatures.push(s.sign(digest));
            }
        }
        (signers, signatures)
    }

    fn qc(&self, round: u64, id: BlockId, who: &[usize]) -> QuorumCert {
        let epoch = self.ctx.epoch();
        let d = self.ctx.domain().vote_digest(epoch, round, &id);
        let (signers, signatures) = self.signed_by(&d, who);
        QuorumCert {
            epoch,
            round,
            block_id: id,
            signers,
            signatures,
        }
    }

    fn tc(&self, round: u64, high_qc: QuorumCert, who: &[usize]) -> TimeoutCert {
        let epoch = self.ctx.epoch();
        let d = self
            .ctx
            .domain()
            .timeout_digest(epoch, round, high_qc.round);
        let (signers, signatures) = self.signed_by(&d, who);
        TimeoutCert {
            epoch,
            round,
            high_qc_rounds: vec![high_qc.round; signatures.len()],
            high_qc,
            signers,
            signatures,
        }
    }

    fn timeout(
        &self,
        signer: (Address, &dyn Signer),
        round: u64,
        high_qc: QuorumCert,
        high_tc: Option<TimeoutCert>,
    ) -> Timeout {
        let epoch = self.ctx.epoch();
        let d = self
            .ctx
            .domain()
            .timeout_digest(epoch, round, high_qc.round);
        Timeout {
            epoch,
            round,
            high_qc,
            high_tc,
            signer: signer.0,
            signature: signer.1.sign(&d),
        }
    }

    fn proposal(&self, signer: &dyn Signer, block: Block, tc: Option<TimeoutCert>) -> Proposal {
        let d = self
            .ctx
            .domain()
            .proposal_digest(block.epoch(), block.round(), &block.id());
        Proposal {
            signature: signer.sign(&d),
            block,
            tc,
        }
    }

    // ----- delivery and checks -----

    fn deliver(&mut self, event: Event) -> Result<Vec<Action>, Violation> {
        let trace = tracing_on();
        if trace {
            eprintln!("-> {}", brief(&event));
        }
        let actions = self.core.handle(event);
        for a in &actions {
            if trace {
                eprintln!("   <- {}", brief(a));
            }
            self.learn(a)?;
        }
        let now = self.core.safety_state().clone();
        if !not_behind(&self.observed, &now) {
            return Err(Violation(format!(
                "safety state went backwards: {:?} -> {:?}",
                safety_key(&self.observed),
                safety_key(&now)
            )));
        }
        self.observed = now;
        if self.core.epoch() < self.epoch {
            return Err(Violation(format!(
                "epoch went backwards: {} -> {}",
                self.epoch,
                self.core.epoch()
            )));
        }
        self.epoch = self.core.epoch();
        Ok(actions)
    }

    fn message(&mut self, message: Message) -> Result<Vec<Action>, Violation> {
        self.deliver(Event::Message {
            from: Address::default(),
            message,
        })
    }

    fn learn(&mut self, a: &Action) -> Result<(), Violation> {
        match a {
            Action::PersistSafety(s) => {
                if !not_behind(&self.persisted, s) {
                    return Err(Violation(format!(
                        "persisted safety state went backwards: {:?} -> {:?}",
                        safety_key(&self.persisted),
                        safety_key(s)
                    )));
                }
                self.persisted = s.clone();
            }
            Action::PersistBlock(b) => self.learn_block(b),
            Action::Broadcast(m) => {
                match m {
                    Message::Vote(v) if v.signer == self.me => {
                        if let Some(prev) = self.my_votes.insert((v.epoch, v.round), v.block_id)
                            && prev != v.block_id
                        {
                            return Err(Violation(format!(
                                "the core voted twice in epoch {} round {}",
                                v.epoch, v.round
                            )));
                        }
                    }
                    Message::Proposal(p) if p.block.proposer() == self.me => {
                        let key = (p.block.epoch(), p.block.round());
                        if let Some(prev) = self.my_proposals.insert(key, p.block.id())
                            && prev != p.block.id()
                        {
                            return Err(Violation(format!(
                                "the core proposed twice in epoch {} round {}",
                                key.0, key.1
                            )));
                        }
                        self.learn_block(&p.block);
                    }
                    Message::Timeout(t) => push_bounded(&mut self.qcs, t.high_qc.clone()),
                    Message::TimeoutCert(tc) => push_bounded(&mut self.tcs, tc.clone()),
                    _ => {}
                }
                push_bounded(&mut self.sent, m.clone());
            }
            Action::RequestPayload { round, .. } => self.last_payload_round = Some(*round),
            Action::FetchBatches { block_id, .. } => self.last_batches = Some(*block_id),
            Action::FetchBlocks { block_id, .. } => self.last_fetch = Some(*block_id),
            Action::ReadChainSet { number, hash } => self.last_chain_read = Some((*number, *hash)),
            Action::Commit(c) => {
                for cb in &c.blocks {
                    // Consecutive within an epoch; an epoch change proved by a record skips the
                    // blocks the record commits (the host takes them from the record or sync).
                    if let Some(h) = self.committed_height
                        && (cb.height <= h || (cb.height != h + 1 && !self.epoch_changed))
                    {
                        return Err(Violation(format!(
                            "committed height {} after {h}",
                            cb.height
                        )));
                    }
                    self.committed_height = Some(cb.height);
                    self.epoch_changed = false;
                }
            }
            Action::PersistEpochChange(r) => {
                self.epoch_changed = true;
                if let Ok(next) = r.next_context(&self.ctx) {
                    self.ctx = next;
                    self.qcs.push(self.ctx.genesis_qc());
                }
                push_bounded(&mut self.records, r.clone());
            }
            Action::BroadcastEpochChange(r) => push_bounded(&mut self.records, r.clone()),
            _ => {}
        }
        Ok(())
    }

    fn learn_block(&mut self, b: &Block) {
        if !self.blocks.iter().any(|k| k.id() == b.id()) {
            push_bounded(&mut self.blocks, b.clone());
            push_bounded(&mut self.qcs, b.qc().clone());
        }
    }
}

/// Builds the cluster of every shape once (key derivation is the costly part).
pub fn clusters() -> Vec<Cluster> {
    SHAPES
        .iter()
        .map(|(powers, scheme)| Cluster::new(*scheme, powers, 40))
        .collect()
}

/// Runs one input against a fresh core of one of `clusters`; `Err` names a broken invariant
/// (a panic inside the core propagates as a panic).
pub fn run(clusters: &[Cluster], input: Input) -> Result<RunStats, Violation> {
    let cluster = &clusters[usize::from(input.shape) % clusters.len()];
    let me = usize::from(input.me) % cluster.signers.len();
    let mut h = Harness::new(cluster, me, input.small)?;
    h.now_ms = 1;
    h.deliver(Event::Start { now_ms: h.now_ms })?;
    for step in input.steps.into_iter().take(MAX_STEPS) {
        h.step(step)?;
    }
    Ok(RunStats {
        round: h.core.round(),
        epoch: h.core.epoch(),
        committed: h.committed_height.unwrap_or(0),
    })
}

/// How far a run got (for the seed-corpus generator).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// The core's round at the end.
    pub round: u64,
    /// Its epoch at the end.
    pub epoch: u64,
    /// The highest committed height.
    pub committed: u64,
}
