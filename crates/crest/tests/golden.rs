//! Golden model images, one per format version, each beside its model as
//! JSON: today's reader must decode each image into exactly its JSON
//! model (read with today's model types, so fields added since take their
//! defaults).
//!
//! * `v2.img` was written by the format 2 writer (PROCESS and FILE records
//!   holding postcard; commit "Golden format-2 image of a fixed model",
//!   whose test built the model from literals) from `v2.json`: every
//!   object kind, open target, shared-memory kind and backing, non-default
//!   values in every field, file data, dense, sparse and compressed page
//!   chunks.
//! * `v3.img` was written by the format 3 writer from `v3.json` (the same
//!   model).
//! * `v3-full.img` (format 3) holds `v3-full.json`, made by
//!   `scripts/golden-model.py` from the schema: every struct, field and
//!   enum variant the model had then, each field with a value other than
//!   its default.  It is not a consistent checkpoint (references point
//!   anywhere): goldens test decoding, not restore.  Later ones
//!   (`v3-2`, `v3-3`, …) are made the same way when the model grows;
//!   every `v3-*.json` here is tested.
//!
//! The goldens together must name every field and variant of today's
//! schema (`goldens_cover_every_field_and_variant`): a field or record
//! kind added to the model needs a new golden (`v3-N.json` from the
//! script, then `CREST_BLESS_GOLDEN=1`), so that a later change which
//! breaks its decoding fails here.
//!
//! Never re-bless an existing file: a golden image that no longer decodes
//! into its JSON means old images broke.  To create a missing one (a new
//! format version), run this test with `CREST_BLESS_GOLDEN=1`.

use crest::codec::ModelReader;
use crest::model::Checkpoint;
use crest_image::{kind, Header, Reader, SealedPages, Writer};

const GOLDEN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

fn golden_header() -> Header {
    Header {
        producer: "crest 0.1.0".into(),
        arch: "x86_64".into(),
        page_size: 4096,
        uts_sysname: "Linux".into(),
        uts_nodename: "golden".into(),
        uts_release: "6.18.0".into(),
        uts_version: "#1 SMP PREEMPT_DYNAMIC".into(),
        uts_machine: "x86_64".into(),
        cpu_vendor: "GenuineIntel".into(),
        xsave_features: 0x2e7,
        xsave_size: 2696,
        created_unix_secs: 1_796_000_000,
    }
}

fn page(seed: u8) -> Vec<u8> {
    (0..4096u32).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// The image of `ckpt` as `write_metadata` makes it, with file data for
/// the unlinked file, the pipes and the memfd, and page chunks: dense,
/// sparse, and compressed.
fn write_image(ckpt: &Checkpoint) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), &golden_header()).unwrap();
    crest::codec::write_metadata(&mut w, ckpt).unwrap();
    w.write_file_data(9, 0, &page(1)).unwrap();
    w.write_file_data(9, 4096, &page(2)[..100]).unwrap();
    w.write_file_data(5, 0, b"hello pipe!").unwrap();
    w.write_file_data(18, 0, b"fifo!").unwrap();
    w.write_file_data(7, 4096, &page(3)).unwrap();
    // Process 0: one dense chunk of the file mapping, a sparse window of
    // the heap (pages 0, 2 and 32 of 33), compressed; process 1: dense.
    w.write_pages(0, 0x5555_5555_4000, &page(4)).unwrap();
    let mut heap = vec![0u8; 33 * 4096];
    for (i, p) in [(0usize, 5u8), (2, 6), (32, 7)] {
        heap[i * 4096..(i + 1) * 4096].copy_from_slice(&page(p));
    }
    let len = heap.len();
    let s = SealedPages::seal(0, 0x5555_5556_0000, heap, len, 4096).unwrap();
    assert_eq!(w.write_sealed(&s, false).unwrap(), 1);
    let zeroish = vec![0x11u8; 4096];
    w.write_pages_compressed(0, 0x5555_5555_b000, &zeroish)
        .unwrap();
    w.write_pages(1, 0x5555_5556_0000, &page(8)).unwrap();
    w.finish().unwrap()
}

fn path(name: &str) -> String {
    format!("{GOLDEN_DIR}/{name}")
}

fn model_of_json(name: &str) -> Checkpoint {
    let text = std::fs::read_to_string(path(name)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Reads an image the way restore does: the model, and the file data and
/// pages as (kind, payload) for comparison.
fn read_image(bytes: &[u8]) -> (u32, Checkpoint, Vec<(u32, Vec<u8>)>) {
    let mut r = Reader::new(bytes).unwrap();
    let version = r.format_version();
    let mut model = ModelReader::new(version);
    let mut rest = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        if model.is_model(rec.kind) {
            model.feed(&rec).unwrap();
        } else {
            model.finish().unwrap();
            rest.push((rec.kind, rec.payload.to_vec()));
        }
    }
    (version, model.take().unwrap(), rest)
}

fn stored(name: &str, build: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
    let p = path(name);
    if std::env::var_os("CREST_BLESS_GOLDEN").is_some() && std::fs::metadata(&p).is_err() {
        std::fs::write(&p, build()).unwrap();
    }
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}; create it with CREST_BLESS_GOLDEN=1"))
}

#[test]
fn golden_v2_decodes_into_its_model() {
    let (version, ckpt, rest) = read_image(&stored("v2.img", || unreachable!()));
    assert_eq!(version, 2);
    assert!(
        ckpt == model_of_json("v2.json"),
        "v2.img no longer decodes into v2.json"
    );
    assert_eq!(rest.len(), 9, "file data and page chunks");
}

#[test]
fn golden_v3_decodes_into_its_model() {
    let m = model_of_json("v3.json");
    let bytes = stored("v3.img", || write_image(&m));
    let (version, ckpt, rest) = read_image(&bytes);
    assert_eq!(version, 3);
    assert!(ckpt == m, "v3.img no longer decodes into v3.json");
    // The same file data and pages as the v2 golden.
    let (_, _, rest2) = read_image(&stored("v2.img", || unreachable!()));
    assert_eq!(rest, rest2);
}

/// The generated goldens (`v3-*.json`, each with its image), oldest
/// first: every field and variant of the model at their time.
fn generated_goldens() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(GOLDEN_DIR)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("v3-") && n.ends_with(".json"))
        .map(|n| n.trim_end_matches(".json").to_string())
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

/// Each generated golden decodes into its model.
#[test]
fn generated_goldens_decode_into_their_models() {
    for name in generated_goldens() {
        let m = model_of_json(&format!("{name}.json"));
        let bytes = stored(&format!("{name}.img"), || {
            let mut w = Writer::new(Vec::new(), &golden_header()).unwrap();
            crest::codec::write_metadata(&mut w, &m).unwrap();
            w.write_file_data(1, 0, &page(9)).unwrap();
            w.write_pages(0, 0x7000_0000_0000, &page(10)).unwrap();
            w.finish().unwrap()
        });
        let (version, ckpt, rest) = read_image(&bytes);
        assert_eq!(version, 3);
        assert!(ckpt == m, "{name}.img no longer decodes into {name}.json");
        assert_eq!(rest.len(), 2);
    }
}

/// Names (keys and string values) of a JSON document.
fn names(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                out.insert(k.clone());
                names(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| names(x, out)),
        serde_json::Value::String(s) => {
            out.insert(s.clone());
        }
        _ => {}
    }
}

/// Field names, tagged variants (required keys) and unit variants
/// (`const`/`enum` strings) of a JSON Schema.
fn schema_names(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("properties", serde_json::Value::Object(p)) => out.extend(p.keys().cloned()),
                    ("required" | "enum", serde_json::Value::Array(r)) => {
                        out.extend(r.iter().filter_map(|s| s.as_str().map(String::from)))
                    }
                    ("const", serde_json::Value::String(c)) => {
                        out.insert(c.clone());
                    }
                    _ => {}
                }
                if k != "description" {
                    schema_names(x, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| schema_names(x, out)),
        _ => {}
    }
}

/// Every field and enum variant of today's model is in some format-3
/// golden: a model change without a golden that holds it fails here.
#[test]
fn goldens_cover_every_field_and_variant() {
    let schema: serde_json::Value =
        serde_json::from_str(&crest::codec::inspect::json_schema()).unwrap();
    let mut want = std::collections::BTreeSet::new();
    schema_names(&schema["$defs"]["Checkpoint"], &mut want);
    for (name, def) in schema["$defs"].as_object().unwrap() {
        if name != "HeaderView" {
            schema_names(def, &mut want);
        }
    }
    let mut have = std::collections::BTreeSet::new();
    let generated = generated_goldens().into_iter().map(|n| format!("{n}.json"));
    for golden in std::iter::once("v3.json".to_string()).chain(generated) {
        let text = std::fs::read_to_string(path(&golden)).unwrap();
        names(&serde_json::from_str(&text).unwrap(), &mut have);
    }
    let missing: Vec<&String> = want.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "fields or variants of the model that no golden image holds: {missing:?}; \
         write a new golden with scripts/golden-model.py (see this file's head)"
    );
}

/// Every model record kind is in a format-3 golden image (MAPPINGS
/// only follows an MM record that is full).
#[test]
fn goldens_hold_every_model_record_kind() {
    let mut seen = std::collections::BTreeSet::new();
    let generated = generated_goldens().into_iter().map(|n| format!("{n}.img"));
    for golden in std::iter::once("v3.img".to_string()).chain(generated) {
        let bytes = stored(&golden, || unreachable!());
        let mut r = Reader::new(&bytes[..]).unwrap();
        while let Some(rec) = r.next_record().unwrap() {
            seen.insert(rec.kind);
        }
    }
    for (k, name) in kind::ALL {
        if kind::is_model_v3(k) && k != kind::MAPPINGS {
            assert!(seen.contains(&k), "no {name} record in any golden image");
        }
    }
}

/// The current writer and reader round-trip the golden model, and an
/// address space with more mappings than one record holds.
#[test]
fn the_current_format_round_trips() {
    let mut m = model_of_json("v3.json");
    let (_, back, _) = read_image(&write_image(&m));
    assert!(back == m);
    let n = crest::codec::MAPPINGS_PER_RECORD * 2 + 5;
    let v = m.processes[0].mm.vmas[2].clone();
    m.processes[0].mm.vmas = (0..n as u64)
        .map(|i| crest::model::Vma {
            start: 0x1000_0000 + i * 0x2000,
            end: 0x1000_1000 + i * 0x2000,
            ..v.clone()
        })
        .collect();
    let bytes = write_image(&m);
    let mut r = Reader::new(&bytes[..]).unwrap();
    let mut mappings = 0;
    while let Some(rec) = r.next_record().unwrap() {
        mappings += (rec.kind == kind::MAPPINGS) as usize;
    }
    assert_eq!(mappings, 2);
    let (_, back, _) = read_image(&bytes);
    assert!(back == m);
}

/// A record kind this reader does not know, among a process's records:
/// skipped when the writer marked it optional, refused by its number
/// otherwise.
#[test]
fn unknown_record_kinds_optional_or_mandatory() {
    let bytes = stored("v3.img", || unreachable!());
    let future = 0x3f;
    assert!(!kind::is_known(future));
    for flags in [crest_image::FLAG_OPTIONAL, 0] {
        let mut r = Reader::new(&bytes[..]).unwrap();
        let mut w = Writer::new(Vec::new(), r.header()).unwrap();
        while let Some(rec) = r.next_record().unwrap() {
            // (Pages come decompressed: written back plain.)
            let f = rec.flags & !crest_image::FLAG_COMPRESSED;
            w.write_record(rec.kind, f, rec.payload).unwrap();
            if rec.kind == kind::THREAD {
                w.write_record(future, flags, b"\x81\xa1x\x01").unwrap();
            }
        }
        let img = w.finish().unwrap();
        let mut r = Reader::new(&img[..]).unwrap();
        let mut model = ModelReader::new(r.format_version());
        let res = (|| {
            while let Some(rec) = r.next_record()? {
                if model.is_model(rec.kind) {
                    model
                        .feed(&rec)
                        .map_err(|e| crest_image::Error::InvalidInput(e.to_string()))?;
                }
            }
            Ok::<_, crest_image::Error>(())
        })();
        if flags == 0 {
            let e = res.unwrap_err().to_string();
            assert!(e.contains("0x3f"), "{e}");
        } else {
            res.unwrap();
            assert!(model.take().unwrap() == model_of_json("v3.json"));
        }
    }
}
