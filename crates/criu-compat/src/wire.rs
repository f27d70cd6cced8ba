//! A raw walk over a protobuf message's top-level fields.
//!
//! prost drops fields its structs do not declare.  A request carrying an
//! option this schema does not know (a newer runtime's) must be refused,
//! not served without it: this walk lists the field numbers present.

/// Protobuf wire types.
const VARINT: u64 = 0;
const I64: u64 = 1;
const LEN: u64 = 2;
const I32: u64 = 5;

fn varint(b: &mut &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some((&byte, rest)) = b.split_first() else {
            return Err("message ends inside a varint".into());
        };
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// One top-level field: its number and, for length-delimited fields,
/// the payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Field<'a> {
    pub number: u32,
    pub payload: Option<&'a [u8]>,
}

/// The top-level fields of `msg`, in order; an error for bytes that are
/// not a well-formed message (truncated, bad wire type, field 0).
pub fn fields(mut msg: &[u8]) -> Result<Vec<Field<'_>>, String> {
    let mut out = Vec::new();
    while !msg.is_empty() {
        let key = varint(&mut msg)?;
        let number = key >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err(format!("invalid field number {number}"));
        }
        let number = number as u32;
        let payload = match key & 7 {
            VARINT => {
                varint(&mut msg)?;
                None
            }
            I64 | I32 => {
                let n = if key & 7 == I64 { 8 } else { 4 };
                if msg.len() < n {
                    return Err(format!("field {number} is truncated"));
                }
                msg = &msg[n..];
                None
            }
            LEN => {
                let n = varint(&mut msg)?;
                if n > msg.len() as u64 {
                    return Err(format!(
                        "field {number} says {n} bytes but {} are left",
                        msg.len()
                    ));
                }
                let (p, rest) = msg.split_at(n as usize);
                msg = rest;
                Some(p)
            }
            t => return Err(format!("field {number} has wire type {t}, not used here")),
        };
        out.push(Field { number, payload });
    }
    Ok(out)
}

/// The payloads of every occurrence of length-delimited field `number`
/// (protobuf merges repeated occurrences of a message field).
pub fn all(msg: &[u8], number: u32) -> Result<Vec<&[u8]>, String> {
    Ok(fields(msg)?
        .into_iter()
        .filter(|f| f.number == number)
        .filter_map(|f| f.payload)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_every_wire_type() {
        // 1: varint 150, 2: "hi", 3: fixed32, 4: fixed64
        let m = [
            0x08, 0x96, 0x01, 0x12, 2, b'h', b'i', 0x1d, 1, 2, 3, 4, 0x21, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        let f = fields(&m).unwrap();
        let nums: Vec<u32> = f.iter().map(|f| f.number).collect();
        assert_eq!(nums, [1, 2, 3, 4]);
        assert_eq!(f[1].payload, Some(&b"hi"[..]));
    }

    #[test]
    fn refuses_malformed_bytes() {
        assert!(fields(&[0x08]).is_err(), "varint cut short");
        assert!(fields(&[0x12, 5, b'a']).is_err(), "length past the end");
        assert!(fields(&[0x0b]).is_err(), "group wire type");
        assert!(fields(&[0x00, 0x00]).is_err(), "field number 0");
        assert!(fields(&[0x1d, 1, 2]).is_err(), "fixed32 cut short");
        assert!(fields(&[0xff; 11]).is_err(), "endless varint");
    }
}
