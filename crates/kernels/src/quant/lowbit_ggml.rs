//! The K-quants read from the blocks a GGUF file stores (llama.cpp's `block_q4_K`, `block_q5_K`
//! and `block_q6_K`) into [`LowBitMatrix`]'s layout, value for value: unlike Q4_0-Q5_1, their
//! quantizer searches for its scales, so the blocks cannot be found again from the values.
use super::lowbit::{LowBitFormat, LowBitMatrix, SUPER};
use super::BLOCK;
use half::f16;

/// Values per K-quant block.
const VALUES: usize = SUPER * BLOCK;

impl LowBitFormat {
    /// Bytes of one of llama.cpp's blocks of 256 values in a K-quant; `None` for the others.
    pub fn ggml_block_bytes(self) -> Option<usize> {
        match self {
            LowBitFormat::Q4K => Some(144),
            LowBitFormat::Q5K => Some(176),
            LowBitFormat::Q6K => Some(210),
            _ => None,
        }
    }
}

impl LowBitMatrix {
    /// A matrix of `cols` columns whose rows are `rows`, each in llama.cpp's blocks of `format`
    /// as a file stores them; `None` unless `format` is a K-quant, `cols` a positive multiple of
    /// 256 and every row `cols / 256` blocks long.
    pub fn from_ggml(format: LowBitFormat, cols: usize, rows: &[&[u8]]) -> Option<Self> {
        let block_bytes = format.ggml_block_bytes()?;
        let mut matrix = Self::zeros(rows.len(), cols, format)?;
        for (row, bytes) in rows.iter().enumerate() {
            if bytes.len() != cols / VALUES * block_bytes {
                return None;
            }
            for (s, block) in bytes.chunks_exact(block_bytes).enumerate() {
                match format {
                    LowBitFormat::Q6K => matrix.put_q6k(row, s, block),
                    _ => matrix.put_q45k(row, s, block),
                }
            }
        }
        Some(matrix)
    }

    /// Block `s` of 256 values of `row` from a Q4_K or Q5_K block: `D`, `M`, 12 bytes of 6-bit
    /// multipliers, (Q5_K) 32 bytes of fifth bits, then 128 bytes of nibbles, in chunks of 64
    /// values whose first 32 are the low nibbles of 32 bytes and the next 32 their high ones.
    fn put_q45k(&mut self, row: usize, s: usize, block: &[u8]) {
        let at = self.scale_index(row, SUPER * s);
        self.scales[at] = f16::from_le_bytes([block[0], block[1]]);
        self.mins[at] = f16::from_le_bytes([block[2], block[3]]);
        // `block` is a whole block (`from_ggml` cuts them with `chunks_exact`).
        let multipliers: [u8; 12] = std::array::from_fn(|i| block[4 + i]);
        for j in 0..SUPER {
            let (scale, min) = scale_and_min(j, &multipliers);
            let (first, second) = (self.sub_index(row, SUPER * s + j, 0), self.sub_index(row, SUPER * s + j, 1));
            self.sub[first] = scale;
            self.sub[second] = min;
        }
        let (high, nibbles) = match self.format() {
            LowBitFormat::Q5K => (Some(&block[16..48]), &block[48..176]),
            _ => (None, &block[16..144]),
        };
        for chunk in 0..4 {
            for l in 0..BLOCK {
                let byte = nibbles[BLOCK * chunk + l];
                let fifth = |shift: usize| high.map_or(0, |h| (h[l] >> shift & 1) << 4);
                self.put(row, SUPER * s + 2 * chunk, l, (byte & 0x0F) | fifth(2 * chunk));
                self.put(row, SUPER * s + 2 * chunk + 1, l, (byte >> 4) | fifth(2 * chunk + 1));
            }
        }
    }

    /// Block `s` of 256 values of `row` from a Q6_K block: 128 bytes of low nibbles, 64 of high
    /// bit pairs, 16 signed multipliers (one per 16 values), then `D`. Each half of 128 values
    /// takes 64 nibble bytes and 32 bit-pair bytes: value `l + 32k` (`l < 32`) has the low
    /// (`k < 2`) or high nibble of byte `l + 32 (k % 2)`, and bits `2k..2k + 2` of pair byte `l`.
    fn put_q6k(&mut self, row: usize, s: usize, block: &[u8]) {
        let at = self.scale_index(row, SUPER * s);
        self.scales[at] = f16::from_le_bytes([block[208], block[209]]);
        for (g, &multiplier) in block[192..208].iter().enumerate() {
            let sub = self.sub_index(row, SUPER * s + g / 2, g % 2);
            self.sub[sub] = multiplier;
        }
        for half in 0..2 {
            let (low, pairs) = (&block[64 * half..64 * half + 64], &block[128 + 32 * half..128 + 32 * half + 32]);
            for k in 0..4 {
                for l in 0..BLOCK {
                    let byte = low[l + BLOCK * (k % 2)];
                    let nibble = if k < 2 { byte & 0x0F } else { byte >> 4 };
                    let q = nibble | (pairs[l] >> (2 * k) & 3) << 4;
                    let v = 128 * half + BLOCK * k + l;
                    self.put(row, SUPER * s + v / BLOCK, v % BLOCK, q);
                }
            }
        }
    }
}

/// Multiplier `j < 8` of the scale and of the minimum from a K block's 12 bytes: the first four
/// of each are the low 6 bits of bytes `j` and `j + 4`; the last four take their low 4 bits from
/// byte `j + 4`'s nibbles and their top 2 from the top bits of bytes `j - 4` and `j`.
fn scale_and_min(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | (q[j - 4] >> 6) << 4, (q[j + 4] >> 4) | (q[j] >> 6) << 4)
    }
}
