//! Node keys ↔ libp2p peer ids.
//!
//! The mixnet names a node by the 32-byte Ed25519 public key of its libp2p
//! identity. An Ed25519 peer id embeds that key (identity multihash of the
//! protobuf-encoded key), so both directions are exact.

use libp2p::{PeerId, identity};

use crate::error::NetError;

/// Multihash code of the identity "hash", used by peer ids that embed
/// their key.
const IDENTITY_MULTIHASH: u64 = 0;

/// The peer id of the node whose Ed25519 public key is `key`.
///
/// Fails if the bytes are not a valid Ed25519 public key.
pub fn peer_id_from_node_key(key: &[u8; 32]) -> Result<PeerId, NetError> {
    let public =
        identity::ed25519::PublicKey::try_from_bytes(key).map_err(|_| NetError::InvalidNodeKey)?;
    Ok(identity::PublicKey::from(public).to_peer_id())
}

/// The Ed25519 public key embedded in `peer`.
///
/// Fails for peer ids of other key types or hashed keys, which no Chainmail
/// node has.
pub fn node_key_from_peer_id(peer: &PeerId) -> Result<[u8; 32], NetError> {
    let multihash = peer.as_ref();
    if multihash.code() != IDENTITY_MULTIHASH {
        return Err(NetError::NotEd25519PeerId(*peer));
    }
    identity::PublicKey::try_decode_protobuf(multihash.digest())
        .ok()
        .and_then(|public| public.try_into_ed25519().ok())
        .map(|public| public.to_bytes())
        .ok_or(NetError::NotEd25519PeerId(*peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for _ in 0..16 {
            let keypair = identity::Keypair::generate_ed25519();
            let peer = keypair.public().to_peer_id();
            let key = node_key_from_peer_id(&peer).unwrap();
            assert_eq!(key, keypair.public().try_into_ed25519().unwrap().to_bytes());
            assert_eq!(peer_id_from_node_key(&key).unwrap(), peer);
        }
    }

    #[test]
    fn random_peer_id_is_refused() {
        // PeerId::random is an identity multihash of random bytes, not a key.
        let peer = PeerId::random();
        assert_eq!(
            node_key_from_peer_id(&peer),
            Err(NetError::NotEd25519PeerId(peer))
        );
    }

    #[test]
    fn invalid_key_is_refused() {
        // y = 2 is not the y-coordinate of a point on Edwards25519.
        let mut key = [0u8; 32];
        key[0] = 2;
        assert_eq!(peer_id_from_node_key(&key), Err(NetError::InvalidNodeKey));
    }
}
