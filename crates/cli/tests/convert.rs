//! `crest convert`: an older image rewritten in the current format, the
//! same model and the same pages; a corrupt input refused with no output
//! left; a 4 GiB image streamed through with crest's RSS under 64 MiB.

mod common;
use common::*;

use crest::codec::ModelReader;
use crest::model::Checkpoint;
use crest_image::{kind, Reader, Writer, FORMAT_VERSION};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

const GOLDEN_V2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crest/tests/golden/v2.img");
const GOLDEN_V2_JSON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crest/tests/golden/v2.json");

/// A record other than the model's: (kind, flags, payload as the reader
/// gives it).
type Other = (u32, u32, Vec<u8>);

/// An image's version, model, and other records.
fn read_image(bytes: &[u8]) -> (u32, Checkpoint, Vec<Other>) {
    let mut r = Reader::new(bytes).expect("an image");
    let version = r.format_version();
    let mut model = ModelReader::new(version);
    let mut rest = Vec::new();
    while let Some(rec) = r.next_record().expect("a valid image") {
        if model.is_model(rec.kind) {
            model.feed(&rec).unwrap();
        } else {
            rest.push((rec.kind, rec.flags, rec.payload.to_vec()));
        }
    }
    (version, model.take().unwrap(), rest)
}

fn golden_model() -> Checkpoint {
    serde_json::from_str(&std::fs::read_to_string(GOLDEN_V2_JSON).unwrap()).unwrap()
}

/// Nothing but `keep` in `dir` (no temporary file left behind).
fn only(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, keep, "files in {}", dir.display());
}

#[test]
fn a_format_2_image_converts_into_the_same_model_and_pages() {
    let dir = temp_dir("convert");
    let out = dir.join("v3.img");
    let o = crest(&["convert", GOLDEN_V2, out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("(format 2)"), "{}", stderr(&o));
    let (v_old, m_old, rest_old) = read_image(&std::fs::read(GOLDEN_V2).unwrap());
    let new = std::fs::read(&out).unwrap();
    let (v_new, m_new, rest_new) = read_image(&new);
    assert_eq!((v_old, v_new), (2, FORMAT_VERSION));
    assert_eq!(m_old, golden_model());
    assert_eq!(m_new, golden_model());
    // File data and pages, compressed ones still compressed.
    assert_eq!(rest_old, rest_new);
    assert!(rest_new
        .iter()
        .any(|r| r.1 & crest_image::FLAG_COMPRESSED != 0));

    // inspect shows the format version.
    let o = crest(&["inspect", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("(format version 3)"), "{}", stdout(&o));
    let o = crest(&["inspect", GOLDEN_V2]);
    assert!(stdout(&o).contains("(format version 2)"), "{}", stdout(&o));

    // Standard input to standard output gives the same bytes.
    let o = Command::new(crest_bin())
        .args(["convert", "-", "-"])
        .stdin(std::fs::File::open(GOLDEN_V2).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout == new, "convert - - differs from the file output");

    // Converting the converted image changes nothing.
    let again = dir.join("again.img");
    let o = crest(&["convert", out.to_str().unwrap(), again.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&again).unwrap() == new);
    only(&dir, &["again.img", "v3.img"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_corrupt_input_is_refused_and_leaves_no_output() {
    let dir = temp_dir("convert-bad");
    let good = std::fs::read(GOLDEN_V2).unwrap();
    let len = good.len();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for at in [20, 100, 300, len / 2, len - 60, len - 10] {
        let mut b = good.clone();
        b[at] ^= 0x40;
        cases.push((format!("byte {at} flipped"), b));
    }
    for at in [10, 500, len / 3, len - 1] {
        cases.push((format!("cut at {at}"), good[..at].to_vec()));
    }
    let mut longer = good.clone();
    longer.extend_from_slice(&[0; 8]);
    cases.push(("data after the tail".into(), longer));
    for (what, bytes) in cases {
        let input = dir.join("in.img");
        std::fs::write(&input, &bytes).unwrap();
        let out = dir.join("out.img");
        let o = crest(&["convert", input.to_str().unwrap(), out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.starts_with("crest: error: ") && err.lines().count() == 1,
            "{what}: {err}"
        );
        only(&dir, &["in.img"]);
        // To a pipe: whatever went out is not an image.
        let o = Command::new(crest_bin())
            .args(["convert", "-", "-"])
            .stdin(std::fs::File::open(&input).unwrap())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(&o));
        let mut r = Reader::new(&o.stdout[..]).ok();
        let valid = r.as_mut().is_some_and(|r| loop {
            match r.next_record() {
                Ok(Some(_)) => continue,
                Ok(None) => break true,
                Err(_) => break false,
            }
        });
        assert!(!valid, "{what}: convert - - wrote a valid image");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

const GIB: u64 = 1 << 30;
const CHUNK: usize = 4 << 20;

/// Writes a format 2 image to `out`: the golden v2 model records, then
/// `total` bytes of non-zero pages in 4 MiB chunks.
fn write_big_v2(out: impl Write, total: u64) -> std::io::Result<()> {
    /// Rewrites the version word of the preamble (the writer writes the
    /// current version; the records below are those of format 2).
    struct V2<W>(W, u64);
    impl<W: Write> Write for V2<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = if self.1 < 16 {
                let mut head = buf[..buf.len().min(16 - self.1 as usize)].to_vec();
                for (i, b) in head.iter_mut().enumerate() {
                    if (8..12).contains(&(self.1 as usize + i)) {
                        *b = [2, 0, 0, 0][self.1 as usize + i - 8];
                    }
                }
                self.0.write(&head)?
            } else {
                self.0.write(buf)?
            };
            self.1 += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.0.flush()
        }
    }
    let golden = std::fs::read(GOLDEN_V2).unwrap();
    let mut r = Reader::new(&golden[..]).unwrap();
    let mut w = Writer::new(V2(out, 0), r.header()).map_err(std::io::Error::other)?;
    while let Some(rec) = r.next_record().unwrap() {
        if matches!(rec.kind, kind::PROCESS | kind::FILE) {
            w.write_record(rec.kind, 0, rec.payload)
                .map_err(std::io::Error::other)?;
        }
    }
    let mut buf: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8 | 1).collect();
    for i in 0..total / CHUNK as u64 {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        w.write_pages(0, 0x7f00_0000_0000 + i * CHUNK as u64, &buf)
            .map_err(std::io::Error::other)?;
    }
    w.finish().map_err(std::io::Error::other)?;
    Ok(())
}

#[test]
fn a_4_gib_image_streams_through_in_little_memory() {
    let total = 4 * GIB;
    // Reaped below with wait4, for its rusage.
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(crest_bin())
        .args(["convert", "-", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let feeder = std::thread::spawn(move || write_big_v2(std::io::BufWriter::new(stdin), total));
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    // Read the converted image as it comes, verifying it.
    let mut r = Reader::new(std::io::BufReader::new(&mut stdout)).expect("converted image");
    assert_eq!(r.format_version(), FORMAT_VERSION);
    let mut model = ModelReader::new(r.format_version());
    let (mut pages, mut chunks) = (0u64, 0u64);
    while let Some(rec) = r.next_record().expect("a valid converted image") {
        if model.is_model(rec.kind) {
            model.feed(&rec).unwrap();
        } else if rec.kind == kind::PAGES {
            let c = rec.page_chunk(4096).unwrap();
            assert_eq!(c.addr, 0x7f00_0000_0000 + chunks * CHUNK as u64);
            assert_eq!(&c.data[..8], &chunks.to_le_bytes());
            pages += c.nr_pages;
            chunks += 1;
        }
    }
    assert_eq!(model.take().unwrap(), golden_model());
    assert_eq!(pages * 4096, total);
    feeder.join().unwrap().expect("feeding the image");
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `status` and `ru` are valid for writes.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    assert_eq!(pid, child.id() as i32);
    let err = errs.join().unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{err}"
    );
    let rss_mib = ru.ru_maxrss as f64 / 1024.0;
    println!("converted 4 GiB; crest's peak RSS {rss_mib:.1} MiB; {err}");
    assert!(rss_mib < 64.0, "crest's peak RSS was {rss_mib:.1} MiB");
    let report: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(report["from_version"], 2);
    assert_eq!(report["page_records"], chunks);
}

/// Rewrites the image at `path` as format 2 would have written it.
fn downgrade_to_v2(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let mut r = Reader::new(&bytes[..]).unwrap();
    let mut model = ModelReader::new(r.format_version());
    let mut w = Writer::new(Vec::new(), r.header()).unwrap();
    let mut written = false;
    while let Some(rec) = r.next_record().unwrap() {
        if model.is_model(rec.kind) {
            model.feed(&rec).unwrap();
            continue;
        }
        if !written {
            crest::codec::write_metadata_v2(&mut w, &model.take().unwrap()).unwrap();
            written = true;
        }
        let flags = rec.flags & !crest_image::FLAG_COMPRESSED;
        w.write_record(rec.kind, flags, rec.payload).unwrap();
    }
    let mut img = w.finish().unwrap();
    img[8..12].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(path, img).unwrap();
}

/// A live process dumped, its image rewritten as format 2: `restore`
/// reads it directly, and so does it once converted.
#[test]
fn a_format_2_image_of_a_live_process_restores_directly_and_converted() {
    init();
    for convert_first in [false, true] {
        let w = Workload::start("files", &[]);
        w.dump_ok();
        let img = w.image();
        downgrade_to_v2(&img);
        let o = crest(&["inspect", img.to_str().unwrap()]);
        assert!(stdout(&o).contains("(format version 2)"), "{}", stdout(&o));
        if convert_first {
            let v3 = w.dir.join("img3");
            let o = crest(&["convert", img.to_str().unwrap(), v3.to_str().unwrap()]);
            assert!(o.status.success(), "{}", stderr(&o));
            std::fs::rename(&v3, &img).unwrap();
            let o = crest(&["inspect", img.to_str().unwrap()]);
            assert!(stdout(&o).contains("(format version 3)"), "{}", stdout(&o));
        }
        w.restore_ok();
        w.go();
        w.expect_pass();
    }
}
