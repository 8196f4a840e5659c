//! Framing of records on disk: `[payload length: u32 LE][crc32 of payload:
//! u32 LE][payload]`, the payload being `[format version: u8][postcard bytes]`.
//! One layout for journal frames and snapshot values.

use serde::{de::DeserializeOwned, Serialize};

use crate::StorageError;

/// Bytes before the payload.
pub const HEADER_LEN: usize = 8;
/// Largest payload accepted; anything larger is corruption.
pub const PAYLOAD_LEN_MAX: usize = 64 << 20;

/// Appends one frame holding `value` to `buffer`. A payload over
/// [`PAYLOAD_LEN_MAX`], which [`decode_at`] would refuse as corruption, is
/// refused here instead (`buffer` is left as it was): nothing is ever
/// written that cannot be read back.
pub fn encode_into<T: Serialize>(value: &T, version: u8, buffer: &mut Vec<u8>) -> Result<(), StorageError> {
    let start = buffer.len();
    buffer.extend_from_slice(&[0u8; HEADER_LEN]);
    buffer.push(version);
    let mut buffer_taken = std::mem::take(buffer);
    let encoded = postcard::to_extend(value, buffer_taken);
    buffer_taken = match encoded {
        Ok(extended) => extended,
        Err(_) => return Err(StorageError::Encode),
    };
    *buffer = buffer_taken;
    let payload_len = buffer.len() - start - HEADER_LEN;
    if payload_len > PAYLOAD_LEN_MAX {
        buffer.truncate(start);
        return Err(StorageError::TooLarge { bytes: payload_len as u64, max: PAYLOAD_LEN_MAX as u64 });
    }
    let payload = &buffer[start + HEADER_LEN..];
    let len = u32::try_from(payload.len()).map_err(|_| StorageError::Encode)?;
    let crc = crc32fast::hash(payload);
    buffer[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buffer[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Encodes `value` as one frame.
pub fn encode<T: Serialize>(value: &T, version: u8) -> Result<Vec<u8>, StorageError> {
    let mut buffer = Vec::with_capacity(128);
    encode_into(value, version, &mut buffer)?;
    Ok(buffer)
}

/// What [`decode_at`] found at an offset.
#[derive(Debug)]
pub enum Decoded<T> {
    /// A whole, valid frame and the offset just past it.
    Frame(T, usize),
    /// No frame: the bytes end here.
    End,
    /// The bytes from here on do not form a valid frame.
    Invalid {
        /// Whether the frame claims to run past the end of the bytes.
        truncated: bool,
    },
}

/// Reads the frame at `offset` of `bytes`.
pub fn decode_at<T: DeserializeOwned>(
    bytes: &[u8],
    offset: usize,
    version: u8,
) -> Result<Decoded<T>, StorageError> {
    let rest = &bytes[offset.min(bytes.len())..];
    if rest.is_empty() {
        return Ok(Decoded::End);
    }
    if rest.len() < HEADER_LEN {
        return Ok(Decoded::Invalid { truncated: true });
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len == 0 || len > PAYLOAD_LEN_MAX {
        return Ok(Decoded::Invalid { truncated: false });
    }
    if rest.len() < HEADER_LEN + len {
        return Ok(Decoded::Invalid { truncated: true });
    }
    let payload = &rest[HEADER_LEN..HEADER_LEN + len];
    if crc32fast::hash(payload) != crc {
        return Ok(Decoded::Invalid { truncated: false });
    }
    if payload[0] != version {
        return Err(StorageError::UnsupportedVersion { found: payload[0], expected: version });
    }
    // Bytes left over mean a payload of another layout, not a value.
    let value = match postcard::take_from_bytes(&payload[1..]) {
        Ok((value, [])) => value,
        _ => return Err(StorageError::Decode { offset: offset as u64 }),
    };
    Ok(Decoded::Frame(value, offset + HEADER_LEN + len))
}

/// Whether any whole, valid frame starts after `offset`: tells damage in the
/// middle of a file from a torn write at its end. Cheap in both cases: a
/// torn tail leaves less than a frame to look at, and after damage in the
/// middle the next valid frame is near.
pub fn any_frame_after(bytes: &[u8], offset: usize) -> bool {
    let mut start = offset + 1;
    while start + HEADER_LEN < bytes.len() {
        let header = &bytes[start..start + HEADER_LEN];
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let end = start + HEADER_LEN + len;
        if len > 0 && end <= bytes.len() && crc32fast::hash(&bytes[start + HEADER_LEN..end]) == crc {
            return true;
        }
        start += 1;
    }
    false
}

/// Decodes a buffer holding exactly one frame (a snapshot value).
pub fn decode_one<T: DeserializeOwned>(bytes: &[u8], version: u8) -> Result<T, StorageError> {
    match decode_at(bytes, 0, version)? {
        Decoded::Frame(value, end) if end == bytes.len() => Ok(value),
        _ => Err(StorageError::Decode { offset: 0 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stored_as_sixteen_fixed_bytes_and_json_keeps_the_number() -> anyhow::Result<()> {
        let random = wallet_actors::AccountId::new(0x9f3a_61c2_0d4e_4b7a_8c55_e1f0_2b6d_7a19)?;
        let stored = postcard::to_allocvec(&random)?;
        assert_eq!(stored, random.get().to_be_bytes(), "16 bytes, not a 19-byte varint");
        assert_eq!(postcard::from_bytes::<wallet_actors::AccountId>(&stored)?, random);
        assert!(postcard::from_bytes::<wallet_actors::TransferId>(&[0u8; 16]).is_err(), "zero is no id");
        // A frame with bytes left after its value is refused, not read short.
        let framed = encode(&(random, 7u8), 1)?;
        assert!(matches!(
            decode_at::<wallet_actors::AccountId>(&framed, 0, 1),
            Err(StorageError::Decode { .. })
        ));
        let text = serde_json::to_string(&random)?;
        assert_eq!(text, random.get().to_string());
        assert_eq!(serde_json::from_str::<wallet_actors::AccountId>(&text)?, random);
        Ok(())
    }

    #[test]
    fn round_trip_and_damage() -> Result<(), StorageError> {
        let mut bytes = encode(&(7u64, "seven".to_string()), 1)?;
        let end = bytes.len();
        bytes.extend(encode(&(8u64, "eight".to_string()), 1)?);
        match decode_at::<(u64, String)>(&bytes, 0, 1)? {
            Decoded::Frame(value, next) => {
                assert_eq!(value, (7, "seven".to_string()));
                assert_eq!(next, end);
            }
            other => panic!("{other:?}"),
        }
        // A torn tail: the second frame cut short.
        let torn = &bytes[..bytes.len() - 2];
        assert!(matches!(decode_at::<(u64, String)>(torn, end, 1)?, Decoded::Invalid { truncated: true }));
        // A flipped bit.
        let mut flipped = bytes.clone();
        flipped[end + HEADER_LEN + 2] ^= 0x40;
        assert!(matches!(
            decode_at::<(u64, String)>(&flipped, end, 1)?,
            Decoded::Invalid { truncated: false }
        ));
        // Nothing is written that the reader would refuse as too large.
        let mut buffer = vec![1u8, 2, 3];
        let too_large = encode_into(&vec![7u8; PAYLOAD_LEN_MAX], 1, &mut buffer);
        assert!(matches!(too_large, Err(StorageError::TooLarge { .. })), "{too_large:?}");
        assert_eq!(buffer, [1, 2, 3]);
        // A future version is refused, not misread.
        let future = encode(&1u8, 9)?;
        assert!(matches!(decode_at::<u8>(&future, 0, 1), Err(StorageError::UnsupportedVersion { .. })));
        Ok(())
    }
}
