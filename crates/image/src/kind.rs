//! Record kinds.
//!
//! The kind is the first word of every record header. Kinds not listed here
//! are *unknown* to this crate: a reader skips them when the record carries
//! [`FLAG_OPTIONAL`](crate::FLAG_OPTIONAL) and refuses the image otherwise.

/// The image header ([`Header`](crate::Header)); exactly one, always first.
pub const HEADER: u32 = 1;
/// A process (task tree / model) record. Its payload belongs to the model.
pub const PROCESS: u32 = 0x10;
/// An open file / file object record. Its payload belongs to the model.
pub const FILE: u32 = 0x11;
/// Raw contents of a file object ([`FileData`](crate::FileData)).
pub const FILE_DATA: u32 = 0x12;
/// A chunk of raw memory pages ([`PageChunk`](crate::PageChunk)).
pub const PAGES: u32 = 0x20;
/// The namespaces of the tree (model payload); at most one, before the
/// processes.
pub const NAMESPACES: u32 = 0x30;
/// The tail ([`Tail`](crate::Tail)); exactly one, always last.
pub const TAIL: u32 = 0xFFFF;

/// A short display name for a kind (`"unknown"` for kinds this crate does not
/// know).
pub fn name(kind: u32) -> &'static str {
    match kind {
        HEADER => "HEADER",
        PROCESS => "PROCESS",
        FILE => "FILE",
        FILE_DATA => "FILE_DATA",
        PAGES => "PAGES",
        NAMESPACES => "NAMESPACES",
        TAIL => "TAIL",
        _ => "unknown",
    }
}

/// Whether this crate knows the kind.
pub fn is_known(kind: u32) -> bool {
    matches!(
        kind,
        HEADER | PROCESS | FILE | FILE_DATA | PAGES | NAMESPACES | TAIL
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_knowledge_agree() {
        for k in [HEADER, PROCESS, FILE, FILE_DATA, PAGES, NAMESPACES, TAIL] {
            assert!(is_known(k));
            assert_ne!(name(k), "unknown");
        }
        for k in [0, 2, 0x13, 0x21, 0xFFFE, 0x1_0000, u32::MAX] {
            assert!(!is_known(k));
            assert_eq!(name(k), "unknown");
        }
    }
}
