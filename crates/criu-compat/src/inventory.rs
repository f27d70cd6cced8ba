//! `inventory.img`: the file CRIU writes first into every images
//! directory.  podman (through go-criu's and its own checks) looks for it
//! to tell a complete checkpoint from an interrupted one, and refuses to
//! restore without it.  crest's checkpoint is `crest.img`; the front
//! writes a minimal inventory beside it once that image is durable, so
//! that such tools find a checkpoint where CRIU would have left one.
//!
//! Format (CRIU's image files): the common image magic and the inventory
//! magic (each a little-endian u32), then one `inventory_entry` message
//! preceded by its length (u32 LE).  The entry says image version 2
//! (CRIU's current images) with one fdinfo per id.

use prost::Message;

pub const FILE: &str = "inventory.img";
pub const COMMON_MAGIC: u32 = 0x5456_4319;
pub const INVENTORY_MAGIC: u32 = 0x5831_3116;

/// The fields of CRIU's `inventory_entry` crest fills.
#[derive(Clone, PartialEq, Message)]
pub struct InventoryEntry {
    #[prost(uint32, required, tag = "1")]
    pub img_version: u32,
    #[prost(bool, optional, tag = "2")]
    pub fdinfo_per_id: Option<bool>,
}

/// The file's bytes.
pub fn encode() -> Vec<u8> {
    let payload = InventoryEntry {
        img_version: 2,
        fdinfo_per_id: Some(true),
    }
    .encode_to_vec();
    let mut out = Vec::with_capacity(12 + payload.len());
    out.extend_from_slice(&COMMON_MAGIC.to_le_bytes());
    out.extend_from_slice(&INVENTORY_MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_inventory_of_version_2() {
        let b = super::encode();
        assert_eq!(&b[..8], &[0x19, 0x43, 0x56, 0x54, 0x16, 0x31, 0x31, 0x58]);
        assert_eq!(
            u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize,
            b.len() - 12
        );
        let e = <super::InventoryEntry as prost::Message>::decode(&b[12..]).unwrap();
        assert_eq!((e.img_version, e.fdinfo_per_id), (2, Some(true)));
    }
}
