//! `threads COUNT`: a process with COUNT threads (the main thread and
//! COUNT-1 more). Each extra thread fills 64 KiB of heap and 8 KiB of its
//! stack with its own pattern and blocks on a condition variable; after go
//! the main thread wakes them and each verifies its data.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crest_bench::{pattern, sleep_ns};

use crate::proto::Proto;

const HEAP_WORDS: usize = 8192;
const STACK_WORDS: usize = 1024;

struct Shared {
    ready: AtomicUsize,
    go: Mutex<bool>,
    cv: Condvar,
}

fn seed(i: usize) -> u64 {
    0x7468_7265_6164_0000 + i as u64
}

fn thread_body(i: usize, sh: &Shared) -> Result<(), String> {
    let mut heap = vec![0u64; HEAP_WORDS];
    pattern::fill(&mut heap, seed(i), 0);
    let mut stack = [0u64; STACK_WORDS];
    pattern::fill(&mut stack, seed(i), HEAP_WORDS as u64);
    let stack = std::hint::black_box(stack);
    sh.ready.fetch_add(1, Ordering::SeqCst);
    let mut go = sh.go.lock().map_err(|_| "poisoned lock")?;
    while !*go {
        go = sh.cv.wait(go).map_err(|_| "poisoned lock")?;
    }
    drop(go);
    if let Some(m) = pattern::check(&heap, seed(i), 0) {
        return Err(format!("thread {i}: heap: {m:?}"));
    }
    if let Some(m) = pattern::check(&stack, seed(i), HEAP_WORDS as u64) {
        return Err(format!("thread {i}: stack: {m:?}"));
    }
    Ok(())
}

pub fn run(p: &Proto, args: &[String]) -> ! {
    let count: usize = match args.first().and_then(|s| s.parse().ok()) {
        Some(n) if n > 0 => n,
        _ => p.finish(Err("usage: threads COUNT".into())),
    };
    let sh = Arc::new(Shared {
        ready: AtomicUsize::new(0),
        go: Mutex::new(false),
        cv: Condvar::new(),
    });
    let mut handles = Vec::new();
    for i in 1..count {
        let sh = sh.clone();
        let h = std::thread::Builder::new()
            .name(format!("w{i}"))
            .stack_size(256 << 10)
            .spawn(move || thread_body(i, &sh));
        match h {
            Ok(h) => handles.push(h),
            Err(e) => p.finish(Err(format!("starting thread {i}: {e}"))),
        }
    }
    while sh.ready.load(Ordering::SeqCst) < count - 1 {
        sleep_ns(1_000_000);
    }
    let data = ((count - 1) * (HEAP_WORDS + STACK_WORDS) * 8) as u64;
    p.info(data, data);
    p.ready();
    if let Err(e) = p.wait_go() {
        p.finish(Err(e));
    }
    *sh.go.lock().unwrap_or_else(|e| e.into_inner()) = true;
    sh.cv.notify_all();
    let mut errors = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a thread panicked".into()),
        }
    }
    if errors.is_empty() {
        p.finish(Ok(()))
    }
    let n = errors.len();
    errors.truncate(5);
    p.finish(Err(format!("{n} thread(s) failed: {}", errors.join("; "))))
}
