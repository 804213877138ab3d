//! 4-bit blocks: 32 values `q` in 0..=15 with a scale `d` and a minimum `m` per block (f16, as
//! llama.cpp stores them), value = `d · q + m`. One layout serves llama.cpp's Q4_0 (`m = -8d`)
//! and Q4_1, and a block quantized the way llama.cpp does it comes back bit for bit from its
//! dequantized values, so a GGUF file's Q4_0/Q4_1 weights are kept exactly.
//!
//! The nibbles are unsigned, so `vpdpbusd` takes them as they are; the minimum contributes
//! `m · Σx` per block, added from the activations' block sums.
use super::{tile_rows, Activations, Path, BLOCK, GROUP, TILE};
use crate::pool::OutPtr;
use half::f16;

/// Bytes of one block of one tile: 16 rows × 32 nibbles.
pub(super) const TILE_BLOCK_BYTES: usize = TILE * BLOCK / 2;

/// How the 4-bit values of a block are chosen (llama.cpp's two formats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Q4Format {
    /// Symmetric: `d` = the value of largest magnitude ÷ -8, `m = -8d`.
    Q4_0,
    /// Asymmetric: `d = (max - min) / 15`, `m = min`.
    Q4_1,
}

/// A matrix in 4-bit blocks, in tiles of 16 rows (the last tile padded with zero rows).
#[derive(Debug, Clone)]
pub struct Q4Matrix {
    pub(super) rows: usize,
    cols: usize,
    format: Q4Format,
    pub(super) blocks: usize,
    /// `[tile][block][group g < 4][row in tile][byte j < 4]`: the low nibble is column
    /// `4g + j` of the block, the high nibble column `16 + 4g + j`.
    pub(super) quants: Vec<u8>,
    /// `[tile][block][row in tile]`.
    pub(super) scales: Vec<f16>,
    pub(super) mins: Vec<f16>,
}

impl Q4Matrix {
    /// Quantizes `values` (`rows × cols`, row-major); `None` unless `cols` is a positive
    /// multiple of 32.
    pub fn quantize(values: &[f32], rows: usize, cols: usize, format: Q4Format) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) || values.len() != rows * cols {
            return None;
        }
        let blocks = cols / BLOCK;
        let tiles = rows.div_ceil(TILE);
        let mut quants = vec![0u8; tiles * blocks * TILE_BLOCK_BYTES];
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
                    quants[at] |= if high { v << 4 } else { v };
                }
            }
        }
        Some(Self { rows, cols, format, blocks, quants, scales, mins })
    }

    /// The byte that holds value `c` of block `b` of row `r` of `tile`, and whether it is the
    /// high nibble.
    fn index(tile: usize, blocks: usize, b: usize, r: usize, c: usize) -> (usize, bool) {
        let (half, c) = (c / 16, c % 16);
        ((tile * blocks + b) * TILE_BLOCK_BYTES + (c / GROUP) * TILE * GROUP + r * GROUP + c % GROUP, half == 1)
    }

    fn value(&self, tile: usize, b: usize, r: usize, c: usize) -> u8 {
        let (at, high) = Self::index(tile, self.blocks, b, r, c);
        if high {
            self.quants[at] >> 4
        } else {
            self.quants[at] & 0x0F
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// How its blocks were quantized.
    pub fn format(&self) -> Q4Format {
        self.format
    }

    /// Bytes read by one product: values, scales and minimums (padding rows included).
    pub fn bytes(&self) -> usize {
        self.quants.len() + 2 * (self.scales.len() + self.mins.len())
    }

    pub fn dequantize(&self) -> Vec<f32> {
        let mut values = Vec::with_capacity(self.rows * self.cols);
        for row in 0..self.rows {
            let (tile, r) = (row / TILE, row % TILE);
            for b in 0..self.blocks {
                let at = (tile * self.blocks + b) * TILE + r;
                let (d, m) = (self.scales[at].to_f32(), self.mins[at].to_f32());
                values.extend((0..BLOCK).map(|c| d * f32::from(self.value(tile, b, r, c)) + m));
            }
        }
        values
    }

    /// Writes `out[i, row]` for every input row `i` and every real row of `tile`.
    ///
    /// # Safety
    /// `tile` must be one of the matrix's tiles, `out` must hold `a.m × rows` values, and no one
    /// else may read or write the outputs of the tile's rows during the call.
    pub(super) unsafe fn tile(&self, path: Path, a: &Activations, tile: usize, out: OutPtr) {
        match path {
            // SAFETY: forwarded from this function's contract.
            Path::Scalar => unsafe { scalar_tile(self, a, tile, out) },
            // SAFETY: `Path::choose` picked this path only after detecting AVX2, FMA and F16C;
            // the rest is this function's contract.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { super::q4_x86::tile_avx2(self, a, tile, out) },
            // SAFETY: as above, with AVX-512F (`Kind::Avx512`), BW and VNNI detected.
            #[cfg(target_arch = "x86_64")]
            Path::Vnni => unsafe { super::q4_x86::tile_vnni(self, a, tile, out) },
        }
    }
}

/// One block as llama.cpp's reference quantizers compute it: values, and `d`, `m` in f16.
fn quantize_block(block: &[f32], format: Q4Format) -> ([u8; BLOCK], f16, f16) {
    let mut q = [0u8; BLOCK];
    match format {
        Q4Format::Q4_0 => {
            let max = block.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = max / -8.0;
            let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (dst, v) in q.iter_mut().zip(block) {
                // Truncation of a value >= 0.5, as llama.cpp's `(int8_t)(x * id + 8.5f)`.
                *dst = ((v * inverse + 8.5) as i32).clamp(0, 15) as u8;
            }
            let d = f16::from_f32(d);
            (q, d, f16::from_f32(-8.0 * d.to_f32()))
        }
        Q4Format::Q4_1 => {
            let (min, max) =
                block.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let d = (max - min) / 15.0;
            let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (dst, v) in q.iter_mut().zip(block) {
                *dst = (((v - min) * inverse + 0.5) as i32).clamp(0, 15) as u8;
            }
            (q, f16::from_f32(d), f16::from_f32(min))
        }
    }
}

/// # Safety
/// As [`Q4Matrix::tile`].
unsafe fn scalar_tile(w: &Q4Matrix, a: &Activations, tile: usize, out: OutPtr) {
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
