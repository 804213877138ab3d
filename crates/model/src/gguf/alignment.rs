//! A look at `general.alignment` before candle reads the file. candle's reader divides by the
//! declared alignment, so a file that declares 0 ends the process with a panic before any
//! error can be returned; no GGUF crate checks it either, hence this walk over the metadata by
//! hand. It reads only lengths and skips values; candle then reads the file for real.
use std::io::{Read, Seek, SeekFrom};

const KEY: &str = "general.alignment";
/// Metadata arrays may nest; llama.cpp writes none deeper than one, so 8 is generous and keeps
/// the skip from recursing on a hostile file.
const MAX_ARRAY_DEPTH: usize = 8;

/// Checks that the alignment the file declares, if any, is a power of two (as llama.cpp
/// requires); a file this walk cannot follow is left to candle's reader, which says why.
pub(super) fn check<R: Read + Seek>(reader: &mut R) -> Result<(), String> {
    let start = reader.stream_position().map_err(|e| e.to_string())?;
    let found = find(reader);
    reader.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
    match found {
        Ok(Some(alignment)) if alignment == 0 || !alignment.is_power_of_two() => {
            Err(format!("metadata `{KEY}` is {alignment}: it must be a power of two"))
        }
        _ => Ok(()),
    }
}

/// The integer value of `general.alignment`, if the file declares one.
fn find<R: Read + Seek>(r: &mut R) -> std::io::Result<Option<u64>> {
    let magic = u32_le(r)?;
    if magic != 0x4655_4747 {
        return Ok(None);
    }
    let version = u32_le(r)?;
    // Version 1 wrote counts and lengths as u32, later versions as u64.
    let wide = version >= 2;
    let _tensors = length(r, wide)?;
    let entries = length(r, wide)?;
    for _ in 0..entries {
        let key_len = length(r, wide)?;
        let is_alignment = if key_len == KEY.len() as u64 {
            let mut key = [0u8; KEY.len()];
            r.read_exact(&mut key)?;
            key == KEY.as_bytes()
        } else {
            skip(r, key_len)?;
            false
        };
        let kind = u32_le(r)?;
        if is_alignment {
            return integer(r, kind);
        }
        skip_value(r, kind, wide, 0)?;
    }
    Ok(None)
}

/// An unsigned or non-negative integer value of type `kind`; another type is no alignment
/// candle would use.
fn integer<R: Read>(r: &mut R, kind: u32) -> std::io::Result<Option<u64>> {
    let size = match kind {
        0 | 1 => 1,
        2 | 3 => 2,
        4 | 5 => 4,
        _ => return Ok(None),
    };
    let mut bytes = [0u8; 8];
    r.read_exact(&mut bytes[..size])?;
    let value = u64::from_le_bytes(bytes);
    let negative = kind % 2 == 1 && bytes[size - 1] & 0x80 != 0;
    Ok((!negative).then_some(value))
}

fn skip_value<R: Read + Seek>(r: &mut R, kind: u32, wide: bool, depth: usize) -> std::io::Result<()> {
    match kind {
        8 => {
            let len = length(r, wide)?;
            skip(r, len)
        }
        9 if depth < MAX_ARRAY_DEPTH => {
            let item = u32_le(r)?;
            let count = length(r, wide)?;
            match fixed_size(item) {
                Some(size) => skip(r, count.saturating_mul(size)),
                None => (0..count).try_for_each(|_| skip_value(r, item, wide, depth + 1)),
            }
        }
        _ => match fixed_size(kind) {
            Some(size) => skip(r, size),
            None => Err(std::io::Error::other("unknown metadata type")),
        },
    }
}

fn fixed_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

fn skip<R: Seek>(r: &mut R, bytes: u64) -> std::io::Result<()> {
    let bytes = i64::try_from(bytes).map_err(|_| std::io::Error::other("length out of range"))?;
    r.seek(SeekFrom::Current(bytes)).map(|_| ())
}

fn u32_le<R: Read>(r: &mut R) -> std::io::Result<u32> {
    let mut bytes = [0u8; 4];
    r.read_exact(&mut bytes)?;
    Ok(u32::from_le_bytes(bytes))
}

fn length<R: Read>(r: &mut R, wide: bool) -> std::io::Result<u64> {
    if wide {
        let mut bytes = [0u8; 8];
        r.read_exact(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    } else {
        u32_le(r).map(u64::from)
    }
}
