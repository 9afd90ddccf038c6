//! Every message of the wire schema decoded on its own (as the block store, sync pages and
//! nested fields reach them), re-encoded and decoded again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::v1;

fn check<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(m) = M::decode(bytes) {
        let again = M::decode(m.encode_to_vec().as_slice()).expect("re-encoding decodes");
        assert_eq!(again, m);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 22 {
        0 => check::<v1::Member>(bytes),
        1 => check::<v1::Reconfigure>(bytes),
        2 => check::<v1::QuorumCert>(bytes),
        3 => check::<v1::TimeoutCert>(bytes),
        4 => check::<v1::BlockHeader>(bytes),
        5 => check::<v1::Block>(bytes),
        6 => check::<v1::Proposal>(bytes),
        7 => check::<v1::Vote>(bytes),
        8 => check::<v1::Timeout>(bytes),
        9 => check::<v1::CommitProof>(bytes),
        10 => check::<v1::CommittedBlock>(bytes),
        11 => check::<v1::EpochChangeRecord>(bytes),
        12 => check::<v1::Evidence>(bytes),
        13 => check::<v1::VotePair>(bytes),
        14 => check::<v1::ProposalPair>(bytes),
        15 => check::<v1::Batch>(bytes),
        16 => check::<v1::BatchRequest>(bytes),
        17 => check::<v1::BatchResponse>(bytes),
        18 => check::<v1::SyncRequest>(bytes),
        19 => check::<v1::BlockRequest>(bytes),
        20 => check::<v1::BlockResponse>(bytes),
        _ => check::<v1::SyncResponse>(bytes),
    }
});
