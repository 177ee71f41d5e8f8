//! Rendezvous placement as keepstore 3.x does it (keepstore.go `rendezvous`): volumes by
//! storage-class priority, highest first, then by `md5(hash + u)` as lowercase hex,
//! ascending, where `u` is the volume UUID without its `zzzzz-nyw5e-` prefix when it has
//! the 27-character Arvados form. Reads and writes use the same order, so a block is
//! found on the first volume tried unless volumes were added since it was written. Pure.

use md5::{Digest, Md5};

use crate::volume::Volume;

/// Indexes into `volumes`, in the order a block with `hash` should be tried.
pub fn order<V: std::ops::Deref<Target = Volume>>(hash: &str, volumes: &[V]) -> Vec<usize> {
    if volumes.len() < 2 {
        // Nothing to order: no MD5 of the hash and the volume's id (a GET of a small
        // block on a one-volume node spends ~1% of its CPU on it).
        return (0..volumes.len()).collect();
    }
    let mut keyed: Vec<(i64, [u8; 16], usize)> = volumes
        .iter()
        .enumerate()
        .map(|(index, volume)| (volume.priority, weight(hash, &volume.uuid), index))
        .collect();
    // Binary MD5 order equals the order of its lowercase hex.
    keyed.sort_by(|left, right| right.0.cmp(&left.0).then(left.1.cmp(&right.1)));
    keyed.into_iter().map(|(_, _, index)| index).collect()
}

fn weight(hash: &str, uuid: &str) -> [u8; 16] {
    let suffix = if uuid.len() == 27 { &uuid[12..] } else { uuid };
    let mut hasher = Md5::new();
    hasher.update(hash.as_bytes());
    hasher.update(suffix.as_bytes());
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::VolumeOptions;
    use std::path::PathBuf;

    fn volume(uuid: &str, priority: i64) -> Box<Volume> {
        let options = VolumeOptions {
            priority,
            ..VolumeOptions::default()
        };
        Box::new(Volume::unchecked(uuid, &PathBuf::from("/"), &options))
    }

    fn md5_hex(text: &str) -> String {
        crate::signature::hex(&Md5::digest(text.as_bytes()))
    }

    #[test]
    fn orders_by_md5_of_hash_and_uuid_suffix() {
        let hash = "6f09f2b353b6d63069f770b90e2b112c";
        let volumes: Vec<_> = (0..8)
            .map(|i| volume(&format!("zzzzz-nyw5e-00000000000000{i}"), 0))
            .collect();
        let order = order(hash, &volumes);
        let weights: Vec<String> = order
            .iter()
            .map(|&i| md5_hex(&format!("{hash}{}", &volumes[i].uuid[12..])))
            .collect();
        let mut sorted = weights.clone();
        sorted.sort();
        assert_eq!(weights, sorted);
        assert_eq!(order.len(), 8);
    }

    #[test]
    fn priority_comes_first_and_odd_uuids_are_used_whole() {
        let hash = "6f09f2b353b6d63069f770b90e2b112c";
        let volumes = vec![volume("a", 0), volume("b", 5), volume("c", 0)];
        let order = order(hash, &volumes);
        assert_eq!(order[0], 1);
        let rest: Vec<String> = order[1..]
            .iter()
            .map(|&i| md5_hex(&format!("{hash}{}", volumes[i].uuid)))
            .collect();
        assert!(rest[0] < rest[1]);
    }
}
