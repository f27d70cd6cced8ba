//! Encode + decode time and size of the per-record payload for candidate
//! encodings (postcard, MessagePack with named fields, CBOR), on a process
//! with 10,000 mappings and one with 400 threads built from the golden
//! model.  Run with
//! `cargo test --release -p crest --test encoding_bench -- --ignored --nocapture`.

use crest::model::*;
use std::time::Instant;

fn golden() -> Checkpoint {
    let s = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/v2.json"))
        .unwrap();
    serde_json::from_str(&s).unwrap()
}

fn many_maps(n: usize) -> Process {
    let mut p = golden().processes.remove(0);
    let base = p.mm.vmas[2].clone();
    p.mm.vmas = (0..n as u64)
        .map(|i| Vma {
            start: 0x7f00_0000_0000 + i * 0x2000,
            end: 0x7f00_0000_1000 + i * 0x2000,
            name: if i % 3 == 0 {
                format!("/usr/lib/x86_64-linux-gnu/libfoo{}.so", i % 50)
            } else {
                String::new()
            },
            pages: i % 2,
            guards: Vec::new(),
            ..base.clone()
        })
        .collect();
    p
}

fn many_threads(n: usize) -> Process {
    let mut p = golden().processes.remove(0);
    let t = p.threads[0].clone();
    p.threads = (0..n as i32)
        .map(|i| Thread {
            tid: 5000 + i,
            pending: Vec::new(),
            creds: None,
            ..t.clone()
        })
        .collect();
    p
}

fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        std::hint::black_box(f());
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    best
}

fn measure(what: &str, p: &Process, parts: impl Fn(&Process) -> Vec<Process>) {
    let reps = 20;
    let pieces = parts(p);
    println!("{what}:");
    let pc: Vec<Vec<u8>> = pieces
        .iter()
        .map(|x| postcard::to_stdvec(x).unwrap())
        .collect();
    let rn: Vec<Vec<u8>> = pieces
        .iter()
        .map(|x| rmp_serde::to_vec_named(x).unwrap())
        .collect();
    let cb: Vec<Vec<u8>> = pieces
        .iter()
        .map(|x| {
            let mut v = Vec::new();
            ciborium::into_writer(x, &mut v).unwrap();
            v
        })
        .collect();
    let size = |v: &Vec<Vec<u8>>| v.iter().map(|x| x.len()).sum::<usize>();
    let enc_pc = time(reps, || {
        pieces
            .iter()
            .map(|x| postcard::to_stdvec(x).unwrap())
            .collect::<Vec<_>>()
    });
    let dec_pc = time(reps, || {
        pc.iter()
            .map(|b| postcard::from_bytes::<Process>(b).unwrap())
            .collect::<Vec<_>>()
    });
    let enc_rn = time(reps, || {
        pieces
            .iter()
            .map(|x| rmp_serde::to_vec_named(x).unwrap())
            .collect::<Vec<_>>()
    });
    let dec_rn = time(reps, || {
        rn.iter()
            .map(|b| rmp_serde::from_slice::<Process>(b).unwrap())
            .collect::<Vec<_>>()
    });
    let enc_cb = time(reps, || {
        pieces
            .iter()
            .map(|x| {
                let mut v = Vec::new();
                ciborium::into_writer(x, &mut v).unwrap();
                v
            })
            .collect::<Vec<_>>()
    });
    let dec_cb = time(reps, || {
        cb.iter()
            .map(|b| ciborium::from_reader::<Process, _>(&b[..]).unwrap())
            .collect::<Vec<_>>()
    });
    println!(
        "  postcard        {:>9} bytes  encode {enc_pc:7.2} ms  decode {dec_pc:7.2} ms",
        size(&pc)
    );
    println!(
        "  rmp-serde named {:>9} bytes  encode {enc_rn:7.2} ms  decode {dec_rn:7.2} ms",
        size(&rn)
    );
    println!(
        "  ciborium        {:>9} bytes  encode {enc_cb:7.2} ms  decode {dec_cb:7.2} ms",
        size(&cb)
    );
}

#[test]
#[ignore]
fn encodings() {
    measure("10,000 mappings", &many_maps(10_000), |p| vec![p.clone()]);
    measure("400 threads", &many_threads(400), |p| vec![p.clone()]);
    // Byte strings: a Vec<u8> as a sequence vs as bytes (serde_bytes).
    let x: Vec<u8> = (0..2696u32 * 400).map(|i| (i * 7) as u8).collect();
    let b = serde_bytes::ByteBuf::from(x.clone());
    let seq = rmp_serde::to_vec(&x).unwrap();
    let byt = rmp_serde::to_vec(&b).unwrap();
    let ds = time(20, || rmp_serde::from_slice::<Vec<u8>>(&seq).unwrap());
    let db = time(20, || {
        rmp_serde::from_slice::<serde_bytes::ByteBuf>(&byt).unwrap()
    });
    println!("1 MiB Vec<u8> in rmp-serde: as seq {} bytes decode {ds:.2} ms; as bytes {} bytes decode {db:.2} ms", seq.len(), byt.len());
}
