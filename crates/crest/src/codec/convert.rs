//! `convert`: rewrite an image of an older format version (or the
//! current one) in the current format, streaming.
//!
//! The model records are read into the model (as restore reads them,
//! whatever the version) and written again as the current records; file
//! data and page chunks pass through one record at a time (a compressed
//! chunk stays compressed), so memory use is bounded by the model and one
//! record, not by the image.  The new tail is written only once the old
//! image has been read to its end and its tail, record count and digest
//! verified: an output cut short or never finished has no tail, and every
//! reader refuses it.  Optional records of kinds this crest does not know
//! are not carried over (the reader skips them).

use crate::codec::{self, ModelReader};
use crate::error::{Error, Result};
use crest_image::{kind, Reader, Writer, FLAG_COMPRESSED, FORMAT_VERSION};
use std::io::{Read, Write};

/// What a conversion did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConvertReport {
    /// The input's format version.
    pub from_version: u32,
    /// The output's (the current one).
    pub to_version: u32,
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub processes: usize,
    pub objects: usize,
    pub page_records: u64,
    pub file_data_records: u64,
}

/// Converts the image read from `input` into the current format, written
/// to `output`; returns the output stream once its tail is written.
pub fn convert<R: Read, W: Write>(input: R, output: W) -> Result<(W, ConvertReport)> {
    let mut reader = Reader::new(input)?;
    let mut report = ConvertReport {
        from_version: reader.format_version(),
        to_version: FORMAT_VERSION,
        ..ConvertReport::default()
    };
    let mut writer = Writer::new(output, reader.header())?;
    let mut model = ModelReader::new(reader.format_version());
    let mut model_written = false;
    let page_size = reader.page_size();
    while let Some(rec) = reader.next_record()? {
        if model.is_model(rec.kind) {
            if model_written {
                return Err(Error::Invalid(format!(
                    "{} record at byte {} comes after the file data or pages",
                    rec.kind_name(),
                    rec.offset
                )));
            }
            model.feed(&rec)?;
            continue;
        }
        if !model_written {
            write_model(&mut writer, &mut model, &mut report)?;
            model_written = true;
        }
        match rec.kind {
            kind::FILE_DATA => {
                let d = rec.file_data()?;
                writer.write_file_data(d.object, d.offset, d.data)?;
                report.file_data_records += 1;
            }
            kind::PAGES => {
                let c = rec.page_chunk(page_size)?;
                if rec.flags & FLAG_COMPRESSED != 0 {
                    writer.write_page_chunk_compressed(&c)?;
                } else {
                    writer.write_page_chunk(&c)?;
                }
                report.page_records += 1;
            }
            k => {
                return Err(Error::Invalid(format!(
                    "unexpected {} record at byte {}",
                    kind::name(k),
                    rec.offset
                )))
            }
        }
    }
    if !model_written {
        write_model(&mut writer, &mut model, &mut report)?;
    }
    // The old tail is verified (next_record returned None): the new one
    // may be written.
    report.input_bytes = reader.offset();
    report.output_bytes = writer.bytes_written();
    let out = writer.finish()?;
    report.output_bytes += (crest_image::RECORD_HEADER_LEN + crest_image::Tail::LEN) as u64;
    Ok((out, report))
}

fn write_model<W: Write>(
    w: &mut Writer<W>,
    model: &mut ModelReader,
    report: &mut ConvertReport,
) -> Result<()> {
    let ckpt = model.take()?;
    report.processes = ckpt.processes.len();
    report.objects = ckpt.objects.len();
    codec::write_metadata(w, &ckpt)
}
