//! Two-stage pipelines: one thread fills buffers while the caller's thread
//! drains the previous ones, so that both cores work (e.g. one copies
//! memory out of a task while the other writes the last chunk out).

use crate::error::Result;
use std::sync::mpsc::sync_channel;

/// Buffers in flight between the stages.
const BUFFERS: usize = 3;

/// For each job in order, `fill` (on a thread of its own) takes a buffer
/// of `buf_len` bytes and makes something of it for the job, which
/// `drain` (on the caller's thread) consumes, handing the buffer back for
/// reuse.  At most [`BUFFERS`] buffers exist at a time.  The first error
/// of either stage stops both and is returned.
pub fn run<J: Sync, T: Send>(
    jobs: &[J],
    buf_len: usize,
    fill: impl Fn(&J, Vec<u8>) -> Result<T> + Sync,
    mut drain: impl FnMut(&J, T) -> Result<Vec<u8>>,
) -> Result<()> {
    let (full_tx, full_rx) = sync_channel::<Result<T>>(BUFFERS);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS.min(jobs.len()) {
        empty_tx
            .send(vec![0u8; buf_len])
            .expect("the receiver is alive");
    }
    std::thread::scope(|sc| -> Result<()> {
        // Owned here, so that an early return drops them before the scope
        // joins the filler: a filler blocked on either channel then wakes
        // up and stops.
        let full_rx = full_rx;
        let empty_tx = empty_tx;
        let fill = &fill;
        sc.spawn(move || {
            for j in jobs {
                let Ok(buf) = empty_rx.recv() else {
                    return; // the drain stopped
                };
                let r = fill(j, buf);
                let failed = r.is_err();
                if full_tx.send(r).is_err() || failed {
                    return;
                }
            }
        });
        for j in jobs {
            let t = full_rx
                .recv()
                .expect("the filler sends one result per job or stops at an error")?;
            let buf = drain(j, t)?;
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
            |&j, mut b| {
                b[..j].fill(j as u8);
                Ok((b, j))
            },
            |&j, (b, n)| {
                assert!(n == j && b[..j].iter().all(|&x| x == j as u8));
                seen.push(j);
                Ok(b)
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
            |&j, b| {
                if j == 50 {
                    Err(Error::msg("fill failed"))
                } else {
                    Ok(b)
                }
            },
            |_, b| Ok(b),
        );
        assert!(r.unwrap_err().to_string().contains("fill failed"));
        let mut drained = 0;
        let r = run(
            &jobs,
            8,
            |_, b| Ok(b),
            |&j, b| {
                drained += 1;
                if j == 10 {
                    Err(Error::msg("drain failed"))
                } else {
                    Ok(b)
                }
            },
        );
        assert!(r.unwrap_err().to_string().contains("drain failed"));
        assert_eq!(drained, 11);
    }
}
