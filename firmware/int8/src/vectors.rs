//! Golden test vectors: quantised inputs with the int8 outputs the host reference computed for
//! them, so a device can prove it computes the same bits. Written by `scanside mcu-vectors`,
//! read in place by the firmware.
//!
//! ```text
//! "SSV1" · count u32 · input_len u32 · output_len u32 · count × (input i8[input_len] ·
//! expected output i8[output_len])
//! ```

/// First four bytes.
pub const MAGIC: [u8; 4] = *b"SSV1";
const HEADER_LEN: usize = 16;

/// Why a vectors file was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum VectorsError {
    /// Wrong magic.
    BadMagic,
    /// The length does not match the header.
    BadLength,
    /// No vectors: a device running none would report success without having computed anything.
    Empty,
}

/// A parsed vectors file.
#[derive(Debug, Clone, Copy)]
pub struct Vectors<'a> {
    bytes: &'a [u8],
    count: usize,
    input_len: usize,
    output_len: usize,
}

fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

impl<'a> Vectors<'a> {
    /// Checks the header and the length.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, VectorsError> {
        if bytes.len() < HEADER_LEN || bytes[..4] != MAGIC {
            return Err(VectorsError::BadMagic);
        }
        let (count, input_len, output_len) =
            (u32_at(bytes, 4), u32_at(bytes, 8), u32_at(bytes, 12));
        // No vectors prove nothing (the device would log PASS); empty vectors neither, and with
        // them any count fits a 16-byte file (found by cargo-fuzz: 4 billion "vectors" in 16 bytes).
        if count == 0 {
            return Err(VectorsError::Empty);
        }
        if input_len == 0 || output_len == 0 {
            return Err(VectorsError::BadLength);
        }
        let expected = input_len
            .checked_add(output_len)
            .and_then(|l| l.checked_mul(count))
            .and_then(|l| l.checked_add(HEADER_LEN));
        if expected != Some(bytes.len()) {
            return Err(VectorsError::BadLength);
        }
        Ok(Self {
            bytes,
            count,
            input_len,
            output_len,
        })
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Input and expected output of vector `i`.
    pub fn get(&self, i: usize) -> Option<(&'a [i8], &'a [i8])> {
        if i >= self.count {
            return None;
        }
        let at = HEADER_LEN + i * (self.input_len + self.output_len);
        let input = &self.bytes[at..at + self.input_len];
        let output = &self.bytes[at + self.input_len..at + self.input_len + self.output_len];
        Some((bytemuck::cast_slice(input), bytemuck::cast_slice(output)))
    }
}

/// Writes a vectors file from `(input, expected output)` pairs of equal lengths.
#[cfg(feature = "std")]
pub fn write(pairs: &[(Vec<i8>, Vec<i8>)]) -> Vec<u8> {
    let (input_len, output_len) = pairs.first().map_or((0, 0), |(i, o)| (i.len(), o.len()));
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    for v in [pairs.len(), input_len, output_len] {
        out.extend_from_slice(&(v as u32).to_le_bytes());
    }
    for (input, output) in pairs {
        assert!(
            input.len() == input_len && output.len() == output_len,
            "vectors of one model"
        );
        out.extend(input.iter().map(|&v| v as u8));
        out.extend(output.iter().map(|&v| v as u8));
    }
    out
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    #[test]
    fn empty_vectors_with_a_huge_count_are_refused() {
        // The cargo-fuzz artifact: "SSV1", count u32::MAX, input and output lengths 0.
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        assert_eq!(
            Vectors::parse(&b).map(|v| v.len()),
            Err(VectorsError::BadLength)
        );
    }

    #[test]
    fn a_file_with_no_vectors_is_refused_so_a_device_cannot_pass_on_nothing() {
        // The bug: `count == 0` parsed, the firmware looped over nothing and logged PASS.
        let empty = write(&[]);
        assert_eq!(
            Vectors::parse(&empty).map(|v| v.len()),
            Err(VectorsError::Empty)
        );
        let one = write(&[(vec![1], vec![2])]);
        assert_eq!(Vectors::parse(&one).map(|v| v.len()), Ok(1));
    }

    #[test]
    fn vectors_round_trip_and_refuse_bad_lengths() {
        let pairs = vec![
            (vec![1, -2, 3], vec![-4, 5]),
            (vec![6, 7, -8], vec![9, -10]),
        ];
        let bytes = write(&pairs);
        let v = Vectors::parse(&bytes).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v.get(1), Some((&[6_i8, 7, -8][..], &[9_i8, -10][..])));
        assert!(v.get(2).is_none());
        assert_eq!(
            Vectors::parse(&bytes[..bytes.len() - 1]).map(|_| ()),
            Err(VectorsError::BadLength)
        );
        assert_eq!(
            Vectors::parse(b"nope").map(|_| ()),
            Err(VectorsError::BadMagic)
        );
    }
}
