//! 4- and 5-bit blocks: 32 values `q` in 0..=15 (or 0..=31) with a scale `d` and a minimum `m`
//! per block (f16, as llama.cpp stores them), value = `d · q + m`. One layout serves llama.cpp's
//! Q4_0 (`m = -8d`), Q4_1, Q5_0 (`m = -16d`) and Q5_1: the low four bits of each value as
//! nibbles, and for the 5-bit formats their fifth bits beside them as one bit mask per 64-byte
//! group vector. A block quantized the way llama.cpp does it comes back bit for bit from its
//! dequantized values, so a GGUF file's blocks of these types are kept exactly.
//!
//! The values are unsigned, so `vpdpbusd` takes them as they are; the minimum contributes
//! `m · Σx` per block, added from the activations' block sums.
use super::{tile_rows, Activations, Path, BLOCK, GROUP, TILE};
use crate::pool::OutPtr;
use half::f16;

/// Bytes of one block of one tile: 16 rows × 32 nibbles.
pub(super) const TILE_BLOCK_BYTES: usize = TILE * BLOCK / 2;

/// How the values of a block are chosen (llama.cpp's four formats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowBitFormat {
    /// Symmetric: `d` = the value of largest magnitude ÷ -8, `m = -8d`.
    Q4_0,
    /// Asymmetric: `d = (max - min) / 15`, `m = min`.
    Q4_1,
    /// Symmetric in 5 bits: `d` = the value of largest magnitude ÷ -16, `m = -16d`.
    Q5_0,
    /// Asymmetric in 5 bits: `d = (max - min) / 31`, `m = min`.
    Q5_1,
}

impl LowBitFormat {
    /// Whether values have a fifth bit.
    pub fn five_bits(self) -> bool {
        matches!(self, LowBitFormat::Q5_0 | LowBitFormat::Q5_1)
    }
}

/// Bit masks per block of one tile: the fifth bits of the low and of the high nibbles of each
/// group vector.
pub(super) const MASKS_PER_BLOCK: usize = 2 * GROUP;

/// A matrix in 4- or 5-bit blocks, in tiles of 16 rows (the last tile padded with zero rows).
#[derive(Debug, Clone)]
pub struct LowBitMatrix {
    pub(super) rows: usize,
    cols: usize,
    format: LowBitFormat,
    pub(super) blocks: usize,
    /// `[tile][block][group g < 4][row in tile][byte j < 4]`: the low nibble is column
    /// `4g + j` of the block, the high nibble column `16 + 4g + j`.
    pub(super) quants: Vec<u8>,
    /// The 5-bit formats' fifth bits, `[tile][block][group g][low, high]`: bit `4r + j` is the
    /// fifth bit of the low (or high) nibble of byte `4r + j` of that group's vector. Empty for
    /// the 4-bit formats.
    pub(super) fifth: Vec<u64>,
    /// `[tile][block][row in tile]`.
    pub(super) scales: Vec<f16>,
    pub(super) mins: Vec<f16>,
}

impl LowBitMatrix {
    /// Quantizes `values` (`rows × cols`, row-major); `None` unless `cols` is a positive
    /// multiple of 32.
    pub fn quantize(values: &[f32], rows: usize, cols: usize, format: LowBitFormat) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) || values.len() != rows * cols {
            return None;
        }
        let blocks = cols / BLOCK;
        let tiles = rows.div_ceil(TILE);
        let mut quants = vec![0u8; tiles * blocks * TILE_BLOCK_BYTES];
        let mut fifth = vec![0u64; if format.five_bits() { tiles * blocks * MASKS_PER_BLOCK } else { 0 }];
        let mut scales = vec![f16::ZERO; tiles * blocks * TILE];
        let mut mins = vec![f16::ZERO; tiles * blocks * TILE];
        for (row, values) in values.chunks(cols).enumerate() {
            let (tile, r) = (row / TILE, row % TILE);
            for (b, block) in values.chunks(BLOCK).enumerate() {
                let (q, d, m) = quantize_block(block, format);
                scales[(tile * blocks + b) * TILE + r] = d;
                mins[(tile * blocks + b) * TILE + r] = m;
                for (c, v) in q.into_iter().enumerate() {
                    let (at, high) = Self::index(tile, blocks, b, r, c);
                    quants[at] |= if high { (v & 0x0F) << 4 } else { v & 0x0F };
                    if v > 0x0F {
                        let (mask, bit) = Self::fifth_index(tile, blocks, b, r, c);
                        fifth[mask] |= 1 << bit;
                    }
                }
            }
        }
        Some(Self { rows, cols, format, blocks, quants, fifth, scales, mins })
    }

    /// The mask that holds the fifth bit of value `c` of block `b` of row `r` of `tile`, and the
    /// bit.
    fn fifth_index(tile: usize, blocks: usize, b: usize, r: usize, c: usize) -> (usize, usize) {
        let (half, c) = (c / 16, c % 16);
        ((tile * blocks + b) * MASKS_PER_BLOCK + (c / GROUP) * 2 + half, r * GROUP + c % GROUP)
    }

    /// The byte that holds value `c` of block `b` of row `r` of `tile`, and whether it is the
    /// high nibble.
    fn index(tile: usize, blocks: usize, b: usize, r: usize, c: usize) -> (usize, bool) {
        let (half, c) = (c / 16, c % 16);
        ((tile * blocks + b) * TILE_BLOCK_BYTES + (c / GROUP) * TILE * GROUP + r * GROUP + c % GROUP, half == 1)
    }

    fn value(&self, tile: usize, b: usize, r: usize, c: usize) -> u8 {
        let (at, high) = Self::index(tile, self.blocks, b, r, c);
        let low = if high { self.quants[at] >> 4 } else { self.quants[at] & 0x0F };
        if self.fifth.is_empty() {
            return low;
        }
        let (mask, bit) = Self::fifth_index(tile, self.blocks, b, r, c);
        low | ((self.fifth[mask] >> bit & 1) as u8) << 4
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// How its blocks were quantized.
    pub fn format(&self) -> LowBitFormat {
        self.format
    }

    /// Bytes read by one product: values, fifth bits, scales and minimums (padding rows
    /// included).
    pub fn bytes(&self) -> usize {
        self.quants.len() + 8 * self.fifth.len() + 2 * (self.scales.len() + self.mins.len())
    }

    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.rows).flat_map(|row| self.dequantize_row(row)).collect()
    }

    /// Row `row` (`< rows`) as f32 values.
    pub fn dequantize_row(&self, row: usize) -> Vec<f32> {
        let (tile, r) = (row / TILE, row % TILE);
        let mut values = Vec::with_capacity(self.cols);
        for b in 0..self.blocks {
            let at = (tile * self.blocks + b) * TILE + r;
            let (d, m) = (self.scales[at].to_f32(), self.mins[at].to_f32());
            values.extend((0..BLOCK).map(|c| d * f32::from(self.value(tile, b, r, c)) + m));
        }
        values
    }

    /// Writes `out[i, row]` for every input row `i` and every real row of `tile`.
    ///
    /// # Safety
    /// `tile` must be one of the matrix's tiles, `out` must hold `a.m × rows` values, and no one
    /// else may read or write the outputs of the tile's rows during the call.
    pub(super) unsafe fn tile(&self, path: Path, a: &Activations, tile: usize, out: OutPtr) {
        let masks = self.quants.len() / TILE_BLOCK_BYTES * MASKS_PER_BLOCK;
        debug_assert_eq!(self.fifth.len(), if self.format.five_bits() { masks } else { 0 });
        match path {
            // SAFETY: forwarded from this function's contract.
            Path::Scalar => unsafe { scalar_tile(self, a, tile, out) },
            // SAFETY: `Path::choose` picked this path only after detecting AVX2, FMA and F16C; a
            // 5-bit format's matrix holds its fifth bits (`quantize` makes them for those alone);
            // the rest is this function's contract.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 if self.format.five_bits() => unsafe {
                super::lowbit_x86::tile_avx2::<true>(self, a, tile, out)
            },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { super::lowbit_x86::tile_avx2::<false>(self, a, tile, out) },
            // SAFETY: as above, with AVX-512F (`Kind::Avx512`), BW and VNNI detected.
            #[cfg(target_arch = "x86_64")]
            Path::Vnni if self.format.five_bits() => unsafe {
                super::lowbit_x86::tile_vnni::<true>(self, a, tile, out)
            },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Path::Vnni => unsafe { super::lowbit_x86::tile_vnni::<false>(self, a, tile, out) },
        }
    }
}

/// One block as llama.cpp's reference quantizers compute it: values, and `d`, `m` in f16.
fn quantize_block(block: &[f32], format: LowBitFormat) -> ([u8; BLOCK], f16, f16) {
    let mut q = [0u8; BLOCK];
    let top = if format.five_bits() { 31 } else { 15 };
    match format {
        LowBitFormat::Q4_0 | LowBitFormat::Q5_0 => {
            let middle = (top + 1) as f32 / 2.0;
            let max = block.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = max / -middle;
            let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (dst, v) in q.iter_mut().zip(block) {
                // Truncation of a value >= 0.5, as llama.cpp's `(int8_t)(x * id + 8.5f)`.
                *dst = ((v * inverse + middle + 0.5) as i32).clamp(0, top) as u8;
            }
            let d = f16::from_f32(d);
            (q, d, f16::from_f32(-middle * d.to_f32()))
        }
        LowBitFormat::Q4_1 | LowBitFormat::Q5_1 => {
            let (min, max) =
                block.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let d = (max - min) / top as f32;
            let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (dst, v) in q.iter_mut().zip(block) {
                *dst = (((v - min) * inverse + 0.5) as i32).clamp(0, top) as u8;
            }
            (q, f16::from_f32(d), f16::from_f32(min))
        }
    }
}

/// # Safety
/// As [`LowBitMatrix::tile`].
unsafe fn scalar_tile(w: &LowBitMatrix, a: &Activations, tile: usize, out: OutPtr) {
    for r in 0..tile_rows(w.rows, tile) {
        for i in 0..a.m {
            let sum: f32 = (0..w.blocks)
                .map(|b| {
                    let xa = i * w.blocks + b;
                    let dot: i32 = (0..BLOCK)
                        .map(|c| i32::from(w.value(tile, b, r, c)) * i32::from(a.quants[xa * BLOCK + c]))
                        .sum();
                    let at = (tile * w.blocks + b) * TILE + r;
                    let (d, m) = (w.scales[at].to_f32(), w.mins[at].to_f32());
                    a.scales[xa] * (d * dot as f32 + m * a.sums[xa] as f32)
                })
                .sum();
            // SAFETY: `i < m` and the row `< n`, inside the `m × n` output, ours (contract).
            unsafe { *out.0.add(i * w.rows + tile * TILE + r) = sum };
        }
    }
}
