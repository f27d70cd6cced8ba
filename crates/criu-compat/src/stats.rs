//! The statistics files runtimes read back after a request: `stats-dump`
//! and `stats-restore` in the work directory (podman's `--print-stats`).
//!
//! Format: the image-service magic and the stats magic (each a
//! little-endian u32), the payload length (u32 LE), then one `stats_entry`
//! message.  Times are in microseconds.

use crate::rpc::{DumpStatsEntry, RestoreStatsEntry, StatsEntry};
use prost::Message;

pub const SERVICE_MAGIC: u32 = 0x5510_5940;
pub const STATS_MAGIC: u32 = 0x5709_3306;
pub const DUMP_FILE: &str = "stats-dump";
pub const RESTORE_FILE: &str = "stats-restore";

fn us(ms: f64) -> u32 {
    (ms * 1000.0).round().clamp(0.0, u32::MAX as f64) as u32
}

/// The file's bytes for `entry`.
pub fn encode(entry: &StatsEntry) -> Vec<u8> {
    let payload = entry.encode_to_vec();
    let mut out = Vec::with_capacity(12 + payload.len());
    out.extend_from_slice(&SERVICE_MAGIC.to_le_bytes());
    out.extend_from_slice(&STATS_MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Reads a statistics file's bytes back (the checks a runtime makes).
pub fn decode(bytes: &[u8]) -> Result<StatsEntry, String> {
    let word = |i: usize| -> Result<u32, String> {
        bytes
            .get(i * 4..i * 4 + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .ok_or_else(|| "statistics file is truncated".to_string())
    };
    if word(0)? != SERVICE_MAGIC || word(1)? != STATS_MAGIC {
        return Err("not a statistics file (magic)".into());
    }
    let n = word(2)? as usize;
    let payload = bytes
        .get(12..12 + n)
        .ok_or_else(|| "statistics payload is truncated".to_string())?;
    StatsEntry::decode(payload).map_err(|e| e.to_string())
}

/// A dump's statistics.  crest reads and writes pages in one pass, so the
/// whole dump is "memdump" and nothing is counted as a separate write;
/// the freezing time is not measured apart from the frozen time.
pub fn dump_entry(r: &crest::DumpReport) -> StatsEntry {
    let scanned = r.pages_written + r.zero_pages_skipped;
    StatsEntry {
        dump: Some(DumpStatsEntry {
            freezing_time: 0,
            frozen_time: us(r.frozen_ms),
            memdump_time: us(r.total_ms),
            memwrite_time: 0,
            pages_scanned: scanned,
            pages_skipped_parent: 0,
            pages_written: r.pages_written,
            irmap_resolve: None,
            pages_lazy: 0,
            page_pipes: None,
            page_pipe_bufs: None,
            shpages_scanned: None,
            shpages_skipped_parent: None,
            shpages_written: None,
        }),
        restore: None,
    }
}

/// A restore's statistics: the whole restore is "restore_time".
pub fn restore_entry(r: &crest::RestoreReport) -> StatsEntry {
    StatsEntry {
        dump: None,
        restore: Some(RestoreStatsEntry {
            pages_compared: 0,
            pages_skipped_cow: 0,
            forking_time: 0,
            restore_time: us(r.total_ms),
            pages_restored: Some(r.pages),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_the_magics() {
        let r = crest::DumpReport {
            pages_written: 10,
            zero_pages_skipped: 5,
            frozen_ms: 1.5,
            total_ms: 20.25,
            ..Default::default()
        };
        let b = encode(&dump_entry(&r));
        assert_eq!(&b[..4], &[0x40, 0x59, 0x10, 0x55]);
        assert_eq!(&b[4..8], &[0x06, 0x33, 0x09, 0x57]);
        let e = decode(&b).unwrap().dump.unwrap();
        assert_eq!(e.frozen_time, 1500);
        assert_eq!(e.memdump_time, 20250);
        assert_eq!(e.pages_scanned, 15);
        assert_eq!(e.pages_written, 10);
        assert!(decode(&b[..b.len() - 1]).is_err());
        let mut bad = b.clone();
        bad[4] ^= 1;
        assert!(decode(&bad).is_err());
    }
}
