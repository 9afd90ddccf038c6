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

/// One fuzz input.
#[derive(Arbitrary, Debug)]
pub struct Input {
    /// Index into [`SHAPES`] (modulo).
    pub shape: u8,
    /// Which member the core is (modulo 4).
    pub me: u8,
    /// Small buffers, so the bounds are reached.
    pub small: bool,
    /// What happens.
    pub steps: Vec<Step>,
}

/// A round, relative to the core's or absolute.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum RoundSel {
    /// The core's round plus a small offset.
    Current(i8),
    /// Far ahead of the core's round.
    Ahead(u16),
    /// `u64::MAX` minus a little.
    NearMax(u8),
    /// Any round.
    Exact(u64),
}

/// An epoch, relative to the harness's current one or absolute.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum EpochSel {
    /// The current epoch.
    Current,
    /// The one before.
    Previous,
    /// The next one.
    Next,
    /// Any epoch.
    Exact(u64),
}

/// Who signs (or claims to sign) a message.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Who {
    /// Member `i % n` of the current set, with its real key.
    Member(u8),
    /// A key that belongs to no member.
    Outsider,
    /// Names member `i % n` as signer but signs with another key.
    Forged(u8),
}

/// How a message the harness built or saw is changed before delivery.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Tamper {
    /// Delivered as it is.
    None,
    /// Another round (the signature no longer matches).
    Round(RoundSel),
    /// Another epoch.
    Epoch(EpochSel),
    /// One signature byte flipped.
    Signature(u8),
    /// The round of a certificate inside the message changed (unsigned by the outer signature).
    InnerRound(RoundSel),
}

/// A new validator set: each cluster member's power (0 leaves it out).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct SetSpec {
    /// Powers, reduced modulo 4.
    pub powers: [u8; 4],
}

/// Which epoch-change record is delivered.
#[derive(Arbitrary, Debug, Clone)]
pub enum RecordSpec {
    /// A valid record for the current epoch, certified by the harness's keys.
    Valid {
        /// The new set.
        set: SetSpec,
        /// B0's round.
        round: RoundSel,
    },
    /// A record the core emitted or the harness delivered before, maybe changed.
    Replay {
        /// Which one.
        index: u8,
        /// How it is changed.
        tamper: Tamper,
    },
    /// A junk record: any epoch and B0 round, a path of junk blocks, an unsigned QC.
    Forged {
        /// Its epoch.
        epoch: EpochSel,
        /// B0's round.
        round: RoundSel,
        /// Blocks after B0.
        extra: u8,
        /// Members named by the Reconfigure.
        set: SetSpec,
        /// The blocks after B0 get small rounds and QC rounds (still above their QC's), so a
        /// huge B0 round meets the checks that come after the per-block ones.
        low_tail: bool,
    },
}

/// A QC given field by field (forged unless it happens to be right).
#[derive(Arbitrary, Debug, Clone)]
pub struct RawQc {
    /// Its epoch.
    pub epoch: EpochSel,
    /// Its round.
    pub round: RoundSel,
    /// A known block (index) or a random id.
    pub block: Result<u8, [u8; 32]>,
    /// Signer bitmap bytes.
    pub bitmap: Vec<u8>,
    /// Signatures.
    pub signatures: Vec<[u8; 65]>,
}

/// A message given field by field.
#[derive(Arbitrary, Debug, Clone)]
pub enum RawMessage {
    /// A vote.
    Vote {
        /// Its epoch.
        epoch: EpochSel,
        /// Its round.
        round: RoundSel,
        /// Block id.
        block: [u8; 32],
        /// Named signer.
        signer: Who,
        /// Signature bytes.
        signature: [u8; 65],
    },
    /// A timeout.
    Timeout {
        /// Its epoch.
        epoch: EpochSel,
        /// Its round.
        round: RoundSel,
        /// Its high QC.
        high_qc: RawQc,
        /// Named signer.
        signer: Who,
        /// Signature bytes.
        signature: [u8; 65],
    },
    /// A timeout certificate.
    Tc {
        /// Its epoch.
        epoch: EpochSel,
        /// Its round.
        round: RoundSel,
        /// Its high QC.
        high_qc: RawQc,
        /// Signer bitmap.
        bitmap: Vec<u8>,
        /// High-QC rounds.
        rounds: Vec<u64>,
        /// Signatures.
        signatures: Vec<[u8; 65]>,
    },
    /// A proposal.
    Proposal {
        /// Block epoch.
        epoch: EpochSel,
        /// Block round.
        round: RoundSel,
        /// Block QC.
        qc: RawQc,
        /// Proposer.
        proposer: Who,
        /// Payload digests.
        payload: Vec<[u8; 32]>,
        /// Signature bytes.
        signature: [u8; 65],
    },
}

/// One thing that happens to the core.
#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    /// A whole honest round: the leader proposes on the highest known QC (the core itself when it
    /// leads), its batches are available, every other member votes for the block.
    HonestRound {
        /// Batch digests in the block.
        batches: u8,
    },
    /// A signed proposal built by the harness.
    Propose {
        /// Its round.
        round: RoundSel,
        /// The QC it extends (index among the known ones).
        qc: u8,
        /// Its proposer; `None` is the round's leader.
        proposer: Option<Who>,
        /// Batch digests.
        batches: u8,
        /// A Reconfigure to the set (read at the last pinned head).
        reconfigure: Option<SetSpec>,
        /// A known TC it carries.
        tc: Option<u8>,
        /// A change after signing.
        tamper: Tamper,
    },
    /// A vote for a known block.
    Vote {
        /// The block (index among the known ones).
        block: u8,
        /// Its round instead of the block's.
        round: Option<RoundSel>,
        /// The voter.
        who: Who,
        /// A change after signing.
        tamper: Tamper,
    },
    /// A timeout.
    Timeout {
        /// Its round.
        round: RoundSel,
        /// Its signer.
        who: Who,
        /// The high QC it carries (index).
        qc: u8,
        /// A known TC it carries.
        tc: Option<u8>,
        /// A change after signing.
        tamper: Tamper,
    },
    /// A TC signed by the members of a bitmask, remembered and maybe delivered.
    Tc {
        /// Its round.
        round: RoundSel,
        /// Bitmask of signing members.
        signers: u8,
        /// The high QC it carries (index).
        qc: u8,
        /// Whether the core gets it now.
        deliver: bool,
        /// A change after signing.
        tamper: Tamper,
    },
    /// A QC on a known block signed by the members of a bitmask, remembered for later steps.
    Certify {
        /// The block (index).
        block: u8,
        /// Bitmask of signing members.
        signers: u8,
    },
    /// The round timer fires.
    Timer {
        /// The round it was set for; `None` is the core's round.
        round: Option<RoundSel>,
        /// Time that passed (ms).
        advance_ms: u16,
    },
    /// The mempool answers (the core's last request, or any round).
    Payload {
        /// The round; `None` answers the last request.
        round: Option<RoundSel>,
        /// Batch digests.
        batches: u8,
    },
    /// The batches of a block are available (the last one asked for, or any known block).
    BatchesAvailable {
        /// A known block (index); `None` answers the last request.
        block: Option<u8>,
    },
    /// Blocks arrive from a fetch: a known block and its known ancestors, newest first.
    Fetched {
        /// The newest block (index); `None` answers the last request.
        block: Option<u8>,
        /// How many ancestors at most.
        count: u8,
        /// Drop one block of the chain.
        gap: Option<u8>,
    },
    /// The oracle's pinned head, with the set read there.
    Pinned {
        /// Chain block number.
        number: u16,
        /// The set.
        set: SetSpec,
        /// Time that passed (ms).
        advance_ms: u16,
    },
    /// The answer to the core's last chain-set read.
    ChainSet {
        /// The set is the one asked about (else another, or none).
        agree: bool,
        /// No set (the hash is not the chain's).
        missing: bool,
    },
    /// Epoch-change records arrive.
    Record(RecordSpec),
    /// Something the core sent, back to it (maybe changed).
    Replay {
        /// Which message.
        index: u8,
        /// How it is changed.
        tamper: Tamper,
    },
    /// A message made of arbitrary fields.
    Raw(RawMessage),
}

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

    // ----- steps -----

    fn step(&mut self, step: Step) -> Result<(), Violation> {
        match step {
            Step::HonestRound { batches } => self.honest_round(batches)?,
            Step::Propose {
                round,
                qc,
                proposer,
                batches,
                reconfigure,
                tc,
                tamper,
            } => {
                let round = self.round(round);
                let qc = self.known_qc(qc);
                let (addr, key) = match proposer {
                    Some(w) => self.who(w),
                    None => {
                        let a = self.ctx.set().leader(round);
                        (a, self.signer_of(&a).unwrap_or(self.outsider.as_ref()))
                    }
                };
                let rc = reconfigure.map(|s| self.reconfigure(self.members_of(s)));
                let block = Block::new(
                    self.ctx.epoch(),
                    round,
                    qc,
                    addr,
                    digests(batches, round),
                    rc,
                );
                let tc = tc.and_then(|i| pick(&self.tcs, i));
                let p = self.proposal(key, block.clone(), tc);
                self.learn_block(&block);
                let m = self.tampered(Message::Proposal(p), tamper);
                self.message(m)?;
            }
            Step::Vote {
                block,
                round,
                who,
                tamper,
            } => {
                let Some(b) = pick(&self.blocks, block) else {
                    return Ok(());
                };
                let r = round.map_or(b.round(), |r| self.round(r));
                let v = self.vote(self.who(who), b.epoch(), r, b.id());
                let m = self.tampered(Message::Vote(v), tamper);
                self.message(m)?;
            }
            Step::Timeout {
                round,
                who,
                qc,
                tc,
                tamper,
            } => {
                let round = self.round(round);
                let tc = tc.and_then(|i| pick(&self.tcs, i));
                let t = self.timeout(self.who(who), round, self.known_qc(qc), tc);
                let m = self.tampered(Message::Timeout(t), tamper);
                self.message(m)?;
            }
            Step::Tc {
                round,
                signers,
                qc,
                deliver,
                tamper,
            } => {
                let round = self.round(round);
                let tc = self.tc(round, self.known_qc(qc), &self.indices(signers));
                push_bounded(&mut self.tcs, tc.clone());
                if deliver {
                    let m = self.tampered(Message::TimeoutCert(tc), tamper);
                    self.message(m)?;
                }
            }
            Step::Certify { block, signers } => {
                if let Some(b) = pick(&self.blocks, block) {
                    let qc = self.qc(b.round(), b.id(), &self.indices(signers));
                    push_bounded(&mut self.qcs, qc);
                }
            }
            Step::Timer { round, advance_ms } => {
                self.now_ms = self.now_ms.saturating_add(u64::from(advance_ms));
                let round = round.map_or(self.core.round(), |r| self.round(r));
                self.deliver(Event::TimerFired {
                    round,
                    now_ms: self.now_ms,
                })?;
            }
            Step::Payload { round, batches } => {
                let round = match round {
                    Some(r) => self.round(r),
                    None => self.last_payload_round.unwrap_or(self.core.round()),
                };
                self.deliver(Event::PayloadReady {
                    round,
                    batches: digests(batches, round),
                })?;
            }
            Step::BatchesAvailable { block } => {
                let id = match block {
                    Some(i) => pick(&self.blocks, i).map(|b| b.id()),
                    None => self.last_batches,
                };
                if let Some(block_id) = id {
                    self.deliver(Event::BatchesAvailable { block_id })?;
                }
            }
            Step::Fetched { block, count, gap } => {
                let id = match block {
                    Some(i) => pick(&self.blocks, i).map(|b| b.id()),
                    None => self.last_fetch,
                };
                let Some(mut id) = id else {
                    return Ok(());
                };
                let mut chain = Vec::new();
                while chain.len() < usize::from(count % 16) + 1 {
                    let Some(b) = self.blocks.iter().find(|b| b.id() == id) else {
                        break;
                    };
                    id = b.parent_id();
                    chain.push(b.clone());
                }
                if let Some(g) = gap
                    && !chain.is_empty()
                {
                    chain.remove(usize::from(g) % chain.len());
                }
                self.deliver(Event::BlocksFetched {
                    from: None,
                    blocks: chain,
                })?;
            }
            Step::Pinned {
                number,
                set,
                advance_ms,
            } => {
                self.now_ms = self.now_ms.saturating_add(u64::from(advance_ms));
                let number = u64::from(number);
                let mut hash = [0u8; 32];
                hash[..8].copy_from_slice(&number.to_le_bytes());
                let members = self.members_of(set);
                self.pinned = Some((number, hash, members.clone()));
                self.deliver(Event::PinnedHead {
                    number,
                    hash,
                    members,
                    now_ms: self.now_ms,
                })?;
            }
            Step::ChainSet { agree, missing } => {
                let Some((number, hash)) = self.last_chain_read else {
                    return Ok(());
                };
                let members = if missing {
                    None
                } else if agree {
                    self.pinned
                        .as_ref()
                        .filter(|(n, h, _)| (*n, *h) == (number, hash))
                        .map(|(_, _, m)| m.clone())
                        .or_else(|| Some(self.ctx.set().member_infos()))
                } else {
                    Some(self.members_of(SetSpec {
                        powers: [1, 2, 3, 0],
                    }))
                };
                self.deliver(Event::ChainSet {
                    number,
                    hash,
                    members,
                })?;
            }
            Step::Record(spec) => {
                let Some(record) = self.record(spec) else {
                    return Ok(());
                };
                push_bounded(&mut self.records, record.clone());
                self.deliver(Event::EpochChanges {
                    from: Some(self.member(1)),
                    records: vec![record],
                })?;
            }
            Step::Replay { index, tamper } => {
                if let Some(m) = pick(&self.sent, index) {
                    let m = self.tampered(m, tamper);
                    self.message(m)?;
                }
            }
            Step::Raw(raw) => {
                let m = self.raw(raw);
                self.message(m)?;
            }
        }
        Ok(())
    }

    /// One honest round on the highest known QC of the current epoch.
    fn honest_round(&mut self, batches: u8) -> Result<(), Violation> {
        let round = self.core.round();
        let epoch = self.ctx.epoch();
        let leader = self.ctx.set().leader(round);
        let mut block = None;
        if leader == self.me {
            let acts = self.deliver(Event::PayloadReady {
                round,
                batches: digests(batches, round),
            })?;
            block = acts.iter().find_map(|a| match a {
                Action::Broadcast(Message::Proposal(p)) if p.block.round() == round => {
                    Some(p.block.clone())
                }
                _ => None,
            });
            // It may have proposed already (an earlier payload answer).
            block = block.or_else(|| {
                self.blocks
                    .iter()
                    .find(|b| b.epoch() == epoch && b.round() == round && b.proposer() == self.me)
                    .cloned()
            });
        } else if let Some(key) = self.signer_of(&leader) {
            let b = Block::new(
                epoch,
                round,
                self.highest_qc(),
                leader,
                digests(batches, round),
                None,
            );
            let p = self.proposal(key, b.clone(), None);
            self.learn_block(&b);
            let acts = self.message(Message::Proposal(p))?;
            if acts
                .iter()
                .any(|a| matches!(a, Action::FetchBatches { block_id, .. } if *block_id == b.id()))
            {
                self.deliver(Event::BatchesAvailable { block_id: b.id() })?;
            }
            block = Some(b);
        }
        let Some(b) = block else {
            return Ok(());
        };
        let others: Vec<Address> = self
            .ctx
            .set()
            .members()
            .iter()
            .map(|m| m.address)
            .filter(|a| *a != self.me)
            .collect();
        for a in others {
            let Some(key) = self.signer_of(&a) else {
                continue;
            };
            let v = self.vote((a, key), epoch, round, b.id());
            self.message(Message::Vote(v))?;
        }
        let all: Vec<usize> = (0..self.ctx.set().len()).collect();
        let qc = self.qc(round, b.id(), &all);
        push_bounded(&mut self.qcs, qc);
        Ok(())
    }

    fn record(&self, spec: RecordSpec) -> Option<EpochChangeRecord> {
        match spec {
            RecordSpec::Valid { set, round } => {
                let members = self.members_of(set);
                if members.is_empty() {
                    return None;
                }
                let epoch = self.ctx.epoch();
                let parent = self.highest_qc();
                let r0 = self.round(round).max(parent.round.saturating_add(1));
                let r1 = r0.checked_add(1)?;
                let all: Vec<usize> = (0..self.ctx.set().len()).collect();
                let leader0 = self.ctx.set().leader(r0);
                let b0 = Block::new(
                    epoch,
                    r0,
                    parent,
                    leader0,
                    Vec::new(),
                    Some(self.reconfigure(members)),
                );
                let qc0 = self.qc(r0, b0.id(), &all);
                let b1 = Block::new(epoch, r1, qc0, self.ctx.set().leader(r1), Vec::new(), None);
                let qc1 = self.qc(r1, b1.id(), &all);
                Some(EpochChangeRecord {
                    epoch,
                    path: vec![b0, b1],
                    qc: qc1,
                })
            }
            RecordSpec::Replay { index, tamper } => {
                let mut r = pick(&self.records, index)?;
                match tamper {
                    Tamper::None => {}
                    Tamper::Epoch(e) => r.epoch = self.epoch_of(e),
                    Tamper::Round(x) | Tamper::InnerRound(x) => r.qc.round = self.round(x),
                    Tamper::Signature(i) => {
                        if let Some(s) = r.qc.signatures.first_mut() {
                            s.0[usize::from(i) % 65] ^= 1;
                        }
                    }
                }
                Some(r)
            }
            RecordSpec::Forged {
                epoch,
                round,
                extra,
                set,
                low_tail,
            } => {
                let epoch = self.epoch_of(epoch);
                let round = self.round(round);
                let qc = QuorumCert {
                    epoch,
                    round: round.saturating_sub(1),
                    block_id: BlockId([3; 32]),
                    signers: SignerBitmap::new(4),
                    signatures: Vec::new(),
                };
                let mut prev = Block::new(
                    epoch,
                    round,
                    qc,
                    self.member(0),
                    Vec::new(),
                    Some(self.reconfigure(self.members_of(set))),
                );
                let mut path = vec![prev.clone()];
                for k in 0..=u64::from(extra % 4) {
                    let q = QuorumCert {
                        epoch,
                        round: if low_tail { k } else { prev.round() },
                        block_id: prev.id(),
                        signers: SignerBitmap::new(4),
                        signatures: Vec::new(),
                    };
                    prev = Block::new(
                        epoch,
                        if low_tail {
                            k + 1
                        } else {
                            round.wrapping_add(k + 1)
                        },
                        q,
                        self.member(1),
                        Vec::new(),
                        None,
                    );
                    path.push(prev.clone());
                }
                let qc = QuorumCert {
                    epoch,
                    round: prev.round(),
                    block_id: prev.id(),
                    signers: SignerBitmap::new(4),
                    signatures: vec![Signature([1; 65]); 3],
                };
                Some(EpochChangeRecord { epoch, path, qc })
            }
        }
    }

    fn tampered(&self, m: Message, t: Tamper) -> Message {
        match (m, t) {
            (m, Tamper::None) => m,
            (Message::Vote(mut v), Tamper::Round(r)) => {
                v.round = self.round(r);
                Message::Vote(v)
            }
            (Message::Vote(mut v), Tamper::Epoch(e)) => {
                v.epoch = self.epoch_of(e);
                Message::Vote(v)
            }
            (Message::Vote(mut v), Tamper::Signature(i)) => {
                v.signature.0[usize::from(i) % 65] ^= 1;
                Message::Vote(v)
            }
            (Message::Timeout(mut t), Tamper::Round(r)) => {
                t.round = self.round(r);
                Message::Timeout(t)
            }
            (Message::Timeout(mut t), Tamper::Epoch(e)) => {
                t.epoch = self.epoch_of(e);
                Message::Timeout(t)
            }
            (Message::Timeout(mut t), Tamper::Signature(i)) => {
                t.signature.0[usize::from(i) % 65] ^= 1;
                Message::Timeout(t)
            }
            (Message::Timeout(mut t), Tamper::InnerRound(r)) => {
                match t.high_tc.as_mut() {
                    Some(tc) => tc.round = self.round(r),
                    None => t.high_qc.round = self.round(r),
                }
                Message::Timeout(t)
            }
            (Message::TimeoutCert(mut tc), Tamper::Round(r) | Tamper::InnerRound(r)) => {
                tc.round = self.round(r);
                Message::TimeoutCert(tc)
            }
            (Message::TimeoutCert(mut tc), Tamper::Epoch(e)) => {
                tc.epoch = self.epoch_of(e);
                Message::TimeoutCert(tc)
            }
            (Message::TimeoutCert(mut tc), Tamper::Signature(i)) => {
                if let Some(s) = tc.signatures.first_mut() {
                    s.0[usize::from(i) % 65] ^= 1;
                }
                Message::TimeoutCert(tc)
            }
            (Message::Proposal(mut p), Tamper::Signature(i)) => {
                p.signature.0[usize::from(i) % 65] ^= 1;
                Message::Proposal(p)
            }
            (Message::Proposal(mut p), Tamper::InnerRound(r)) => {
                let round = self.round(r);
                match p.tc.as_mut() {
                    Some(tc) => tc.round = round,
                    None => {
                        p.tc = Some(self.tc(round, p.block.qc().clone(), &self.indices(0)));
                    }
                }
                Message::Proposal(p)
            }
            (Message::Proposal(p), Tamper::Round(r)) => {
                // A relay rebuilds the block at another round and keeps the signature.
                let h = p.block.header();
                let b = Block::new(
                    h.epoch,
                    self.round(r),
                    h.qc.clone(),
                    h.proposer,
                    p.block.payload().to_vec(),
                    h.reconfigure.clone(),
                );
                Message::Proposal(Proposal { block: b, ..p })
            }
            (Message::Proposal(p), Tamper::Epoch(e)) => {
                let h = p.block.header();
                let b = Block::new(
                    self.epoch_of(e),
                    h.round,
                    h.qc.clone(),
                    h.proposer,
                    p.block.payload().to_vec(),
                    h.reconfigure.clone(),
                );
                Message::Proposal(Proposal { block: b, ..p })
            }
            (m, _) => m,
        }
    }

    fn raw_qc(&self, q: RawQc) -> QuorumCert {
        let block_id = match q.block {
            Ok(i) => pick(&self.blocks, i).map_or(BlockId([0; 32]), |b| b.id()),
            Err(id) => BlockId(id),
        };
        let signers = bitmap(&q.bitmap);
        QuorumCert {
            epoch: self.epoch_of(q.epoch),
            round: self.round(q.round),
            block_id,
            signers,
            signatures: q.signatures.into_iter().take(16).map(Signature).collect(),
        }
    }

    fn raw(&self, raw: RawMessage) -> Message {
        match raw {
            RawMessage::Vote {
                epoch,
                round,
                block,
                signer,
                signature,
            } => Message::Vote(Vote {
                epoch: self.epoch_of(epoch),
                round: self.round(round),
                block_id: BlockId(block),
                signer: self.who(signer).0,
                signature: Signature(signature),
            }),
            RawMessage::Timeout {
                epoch,
                round,
                high_qc,
                signer,
                signature,
            } => Message::Timeout(Timeout {
                epoch: self.epoch_of(epoch),
                round: self.round(round),
                high_qc: self.raw_qc(high_qc),
                high_tc: None,
                signer: self.who(signer).0,
                signature: Signature(signature),
            }),
            RawMessage::Tc {
                epoch,
                round,
                high_qc,
                bitmap,
                rounds,
                signatures,
            } => {
                let signers = self::bitmap(&bitmap);
                Message::TimeoutCert(TimeoutCert {
                    epoch: self.epoch_of(epoch),
                    round: self.round(round),
                    high_qc: self.raw_qc(high_qc),
                    signers,
                    high_qc_rounds: rounds.into_iter().take(16).collect(),
                    signatures: signatures.into_iter().take(16).map(Signature).collect(),
                })
            }
            RawMessage::Proposal {
                epoch,
                round,
                qc,
                proposer,
                payload,
                signature,
            } => {
                let block = Block::new(
                    self.epoch_of(epoch),
                    self.round(round),
                    self.raw_qc(qc),
                    self.who(proposer).0,
                    payload.into_iter().take(16).map(BatchDigest).collect(),
                    None,
                );
                Message::Proposal(Proposal {
                    block,
                    tc: None,
                    signature: Signature(signature),
                })
            }
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
