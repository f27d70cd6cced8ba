//! Errors of the image format.

use crate::{kind, FLAG_COMPRESSED, KNOWN_FLAGS};

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading or writing an image.
///
/// Offsets are byte positions in the stream, counted from its first byte
/// (the first byte of the magic is offset 0).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream does not start with [`MAGIC`](crate::MAGIC).
    #[error(
        "not a crest image: the stream does not start with the \"CRESTIMG\" magic \
         (wrong file, or not written by `crest dump`)"
    )]
    BadMagic,

    /// The image uses a format version this crate cannot read.
    #[error(
        "image format version {found} is not supported: this crest reads format versions \
         {} to {supported}; read it with the crest that wrote it (or a newer one)",
        crate::MIN_FORMAT_VERSION
    )]
    UnsupportedVersion {
        /// Version found in the preamble.
        found: u32,
        /// Newest version this crate reads (it reads all from
        /// [`MIN_FORMAT_VERSION`](crate::MIN_FORMAT_VERSION) on).
        supported: u32,
    },

    /// The stream ended before the tail record was read.
    #[error(
        "image is truncated at byte {offset} (no tail record): the dump did not finish \
         or the stream was cut"
    )]
    Truncated {
        /// Stream offset at which the data ended.
        offset: u64,
    },

    /// The stream is damaged: bad checksum, nonzero padding, impossible
    /// length, misplaced or inconsistent record, tail mismatch...
    #[error("image is corrupt at byte {offset}: {what}")]
    Corrupt {
        /// Stream offset of the damaged structure.
        offset: u64,
        /// What was found wrong.
        what: String,
    },

    /// A record of a kind this crate does not know, not marked optional.
    #[error(
        "image needs record kind {kind:#x} (at byte {offset}), which this crest does not \
         know: the image was written by a newer crest; read it with that version or newer"
    )]
    UnknownRecord {
        /// The unknown kind.
        kind: u32,
        /// Stream offset of the record header.
        offset: u64,
    },

    /// A record uses flag bits this crate does not support.
    #[error(
        "record {} (kind {kind:#x}) at byte {offset} has flags {flags:#x}: {}",
        kind::name(*.kind),
        flags_detail(*.kind, *.flags)
    )]
    UnsupportedFlags {
        /// Kind of the record.
        kind: u32,
        /// Its flags word.
        flags: u32,
        /// Stream offset of the record header.
        offset: u64,
    },

    /// The HEADER record's payload is invalid.
    #[error("invalid image header: {0}")]
    BadHeader(String),

    /// A PAGES or FILE_DATA payload is invalid.
    #[error("invalid data chunk in the record at byte {offset}: {what}")]
    BadChunk {
        /// Stream offset of the record header (0 when the payload was parsed
        /// on its own, outside a stream).
        offset: u64,
        /// What was found wrong.
        what: String,
    },

    /// The API was used in a way that cannot produce a valid image (writing a
    /// reserved kind, an oversized record, continuing after a failure...).
    #[error("invalid use of the image format: {0}")]
    InvalidInput(String),

    /// Reading or writing the underlying stream failed.  (Its text holds
    /// the cause, and it has no `source()`: a report printing the chain
    /// says it once.)
    #[error("I/O error on the image stream: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl Error {
    pub(crate) fn corrupt(offset: u64, what: impl Into<String>) -> Self {
        Error::Corrupt {
            offset,
            what: what.into(),
        }
    }

    pub(crate) fn chunk(offset: u64, what: impl Into<String>) -> Self {
        Error::BadChunk {
            offset,
            what: what.into(),
        }
    }
}

fn flags_detail(kind: u32, flags: u32) -> String {
    let mut unknown = flags & !KNOWN_FLAGS;
    if kind == kind::PAGES {
        unknown &= !FLAG_COMPRESSED;
    }
    if unknown & FLAG_COMPRESSED != 0 {
        "it is marked compressed (flag bit 1), which only page records may be".to_string()
    } else {
        format!(
            "bits {unknown:#x} are unknown to this crest; the image was written by a newer crest \
             or is corrupt"
        )
    }
}
