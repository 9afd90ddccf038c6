//! Members and epochs: the chain oracle's pinned views, the peer list and the dials that
//! follow the validator set, and what an epoch change updates.

use super::*;

impl Driver {
    /// Polls the chain's pinned head beside consensus; each reading comes back as a completion.
    pub(super) fn spawn_oracle(&mut self) {
        let Some(chain) = self.chain.clone() else {
            return;
        };
        let done = self.done_tx.clone();
        let poll = self.cfg.oracle_poll.max(Duration::from_millis(50));
        self.oracle_task = Some(tokio::spawn(async move {
            let mut last_error: Option<String> = None;
            loop {
                match chain.pinned().await {
                    Ok(view) => {
                        if last_error.take().is_some() {
                            tracing::info!("oracle reads the chain again");
                        }
                        if done.send(Completion::Pinned(view)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        if last_error.as_deref() != Some(e.as_str()) {
                            tracing::warn!(error = %e, "oracle: cannot read the pinned head; epoch changes wait");
                        }
                        last_error = Some(e);
                    }
                }
                tokio::time::sleep(poll).await;
            }
        }));
    }

    /// A reading of the pinned head: URLs update at once (no epoch change needed), then the core
    /// hears the head and the set read there.
    pub(super) fn on_pinned(&mut self, view: ChainSet) -> Result<(), DriverError> {
        let urls: HashMap<Address, String> = view
            .members
            .iter()
            .map(|m| (m.info.address, m.url.clone()))
            .collect();
        let mut changed_urls = Vec::new();
        for m in self.members.iter_mut().chain(self.prev_members.iter_mut()) {
            if let Some(u) = urls.get(&m.info.address)
                && *u != m.url
            {
                tracing::info!(member = %hex0x(&m.info.address.0), old = %m.url, new = %u, "connection URL changed");
                m.url = u.clone();
                changed_urls.push(u.clone());
            }
        }
        self.registered = view.members.clone();
        self.refresh_peers();
        if !changed_urls.is_empty() {
            for u in changed_urls {
                if let Ok(addr) = u.parse() {
                    self.outbox.push(Outgoing::Dial(addr));
                }
            }
            self.publish_static_status();
        }
        let now = self.now_ms();
        self.feed(Event::PinnedHead {
            number: view.number,
            hash: view.hash,
            members: view.members.into_iter().map(|m| m.info).collect(),
            now_ms: now,
        })
    }

    /// Rebuilds the address <-> PeerId maps (current and previous members, and every registered
    /// node) and tells the network who counts as a member for gossip and votes.
    pub(super) fn refresh_peers(&mut self) {
        self.by_addr.clear();
        self.by_peer.clear();
        for m in self
            .registered
            .iter()
            .chain(self.prev_members.iter())
            .chain(self.members.iter())
        {
            if let Ok(p) = peer_id_from_public_key(&m.info.public_key.0) {
                self.by_addr.insert(m.info.address, p);
                self.by_peer.insert(p, m.info.address);
            }
        }
        // With their powers (a member of both sets at its current one): the network shares the
        // batch intake by them.
        let mut heard: HashMap<PeerId, u64> = HashMap::new();
        for m in self.prev_members.iter().chain(self.members.iter()) {
            if let Some(p) = self.by_addr.get(&m.info.address) {
                heard.insert(*p, m.info.power);
            }
        }
        // Every oracle poll lands here; the network hears of the set only when it changed.
        if heard != self.heard {
            self.heard = heard.clone();
            self.outbox.push(Outgoing::SetMembers(heard));
        }
    }

    /// The epoch ended at the record's B0 (already durable): the new set, schedule and peers
    /// apply now. Called in action order, so with several records the last one wins.
    pub(super) fn on_epoch_changed(&mut self, r: &EpochChangeRecord) {
        let urls: HashMap<Address, String> = self
            .registered
            .iter()
            .chain(self.members.iter())
            .map(|m| (m.info.address, m.url.clone()))
            .collect();
        let was = self.is_member();
        self.prev_members = std::mem::take(&mut self.members);
        self.members = with_urls(r.members(), &urls);
        self.epoch_b0 = r.b0().map(Block::id);
        let is = self.is_member();
        self.ever_member |= is;
        self.metrics.epoch_changes.inc();
        let total: u64 = self.members.iter().map(|m| m.info.power).sum();
        tracing::info!(
            epoch = r.next_epoch(),
            chain_block = r.reconfigure().map_or(0, |rc| rc.chain_block_number),
            members = self.members.len(),
            total_power = total,
            "epoch change: new validator set applies"
        );
        if was && !is {
            tracing::warn!(
                epoch = r.next_epoch(),
                "this node was removed from the validator set: it no longer votes or proposes, it follows the chain as an observer"
            );
        } else if !was && is {
            tracing::info!(epoch = r.next_epoch(), "this node joined the validator set");
        }
        self.refresh_peers();
        self.publish_static_status();
    }

    pub(super) async fn dial_members(&mut self) {
        for m in &self.members {
            if m.info.address == self.me {
                continue;
            }
            let Some(peer) = self.by_addr.get(&m.info.address) else {
                continue;
            };
            if self.connected.contains(peer) {
                continue;
            }
            if let Ok(addr) = m.url.parse() {
                let _ = self.net.dial(addr).await;
            }
        }
    }
}

/// Members with the URLs known for them (empty until the chain shows one).
pub(super) fn with_urls(infos: &[MemberInfo], urls: &HashMap<Address, String>) -> Vec<Member> {
    infos
        .iter()
        .map(|i| Member {
            info: i.clone(),
            url: urls.get(&i.address).cloned().unwrap_or_default(),
        })
        .collect()
}
