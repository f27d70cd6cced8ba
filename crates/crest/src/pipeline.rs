//! Two-stage pipelines: one thread fills buffers while the caller's thread
//! drains the previous ones, so that both cores work (e.g. one copies
//! memory out of a task while the other writes the last chunk out).

use crate::error::Result;
use std::sync::mpsc::sync_channel;

/// Buffers in flight between the stages.
const BUFFERS: usize = 3;

/// For each job in order, `fill` (on a thread of its own) puts the job's
/// bytes into a buffer of `len(job)` bytes and says something of them,
/// then `drain` (on the caller's thread) consumes both.  Buffers are
/// reused; at most [`BUFFERS`] of `max_len` bytes exist at a time.  The
/// first error of either stage stops both and is returned.
pub fn run<J: Sync, T: Send>(
    jobs: &[J],
    max_len: usize,
    len: impl Fn(&J) -> usize + Sync,
    fill: impl Fn(&J, &mut [u8]) -> Result<T> + Sync,
    mut drain: impl FnMut(&J, &[u8], T) -> Result<()>,
) -> Result<()> {
    let (full_tx, full_rx) = sync_channel::<Result<(Vec<u8>, T)>>(BUFFERS);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        empty_tx
            .send(vec![0u8; max_len])
            .expect("the receiver is alive");
    }
    std::thread::scope(|sc| -> Result<()> {
        // Owned here, so that an early return drops them before the scope
        // joins the filler: a filler blocked on either channel then wakes
        // up and stops.
        let full_rx = full_rx;
        let empty_tx = empty_tx;
        let (len, fill) = (&len, &fill);
        sc.spawn(move || {
            for j in jobs {
                let Ok(mut buf) = empty_rx.recv() else {
                    return; // the drain stopped
                };
                let r = fill(j, &mut buf[..len(j)]).map(|t| (buf, t));
                let failed = r.is_err();
                if full_tx.send(r).is_err() || failed {
                    return;
                }
            }
        });
        for j in jobs {
            let (buf, t) = full_rx
                .recv()
                .expect("the filler sends one buffer per job or stops at an error")?;
            drain(j, &buf[..len(j)], t)?;
            let _ = empty_tx.send(buf);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn jobs_in_order_with_reused_buffers() {
        let jobs: Vec<usize> = (1..=20).collect();
        let mut seen = Vec::new();
        run(
            &jobs,
            32,
            |&j| j,
            |&j, b| {
                b.fill(j as u8);
                Ok(())
            },
            |&j, b, ()| {
                assert!(b.len() == j && b.iter().all(|&x| x == j as u8));
                seen.push(j);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, jobs);
    }

    #[test]
    fn first_error_of_either_stage_stops() {
        let jobs: Vec<usize> = (0..100).collect();
        let r = run(
            &jobs,
            8,
            |_| 8,
            |&j, _| {
                if j == 50 {
                    Err(Error::msg("fill failed"))
                } else {
                    Ok(())
                }
            },
            |_, _, ()| Ok(()),
        );
        assert!(r.unwrap_err().to_string().contains("fill failed"));
        let mut drained = 0;
        let r = run(
            &jobs,
            8,
            |_| 8,
            |_, _| Ok(()),
            |&j, _, ()| {
                drained += 1;
                if j == 10 {
                    Err(Error::msg("drain failed"))
                } else {
                    Ok(())
                }
            },
        );
        assert!(r.unwrap_err().to_string().contains("drain failed"));
        assert_eq!(drained, 11);
    }
}
