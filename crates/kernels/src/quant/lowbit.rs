//! 4-, 5- and 6-bit blocks of 32 values `q` (0..=15, 0..=31 or 0..=63), value = `d · q + m`,
//! with a scale `d` and a minimum `m` per block or per half block. One layout serves llama.cpp's
//! Q4_0 (`m = -8d`), Q4_1, Q5_0 (`m = -16d`) and Q5_1 (a scale per block, in f16), its K-quants
//! Q4_K and Q5_K (blocks of 256 with an f16 scale and minimum, each block of 32 a 6-bit multiple
//! of them) and Q6_K (blocks of 256 with an f16 scale, each half block of 16 an int8 multiple
//! of it, `m = -32d`): the low four bits of each value as nibbles, and the fifth and sixth bits
//! beside them as bit masks per 64-byte group vector. A block quantized the way llama.cpp does it
//! comes back bit for bit from its dequantized values, so a GGUF file's Q4_0-Q5_1 blocks are
//! kept exactly; the K-quants are read from the file's blocks (`lowbit_ggml.rs`).
//!
//! The values are unsigned, so `vpdpbusd` takes them as they are; the minimum contributes
//! `m · Σx` per block, added from the activations' block sums.
use super::{tile_rows, Activations, Out, Path, BLOCK, GROUP, TILE};
use half::f16;

/// Bytes of one block of one tile: 16 rows × 32 nibbles.
pub(super) const TILE_BLOCK_BYTES: usize = TILE * BLOCK / 2;

/// Blocks of 32 in one of the K-quants' blocks of 256.
pub(super) const SUPER: usize = 8;

/// Bytes of the K-quants' per-block multipliers in one block of one tile: 16 rows' scale
/// multipliers, then 16 rows' minimum multipliers (Q4_K, Q5_K) or the second half block's scale
/// multipliers (Q6_K).
pub(super) const TILE_SUB_BYTES: usize = 2 * TILE;

/// How the values of a block are chosen (llama.cpp's formats).
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
    /// 4 bits, `d = D · s` and `m = -M · n` with `D`, `M` per 256 values, `s`, `n` in 0..64
    /// per 32.
    Q4K,
    /// Q4_K's scales over 5-bit values.
    Q5K,
    /// 6 bits, `d = D · s` per 16 values with `s` a signed byte and `D` per 256, `m = -32d`.
    Q6K,
}

/// Where a format keeps its scales and minimums; the kernels take it as a const parameter.
pub(super) mod scaling {
    /// `d` and `m` per block, in f16.
    pub const BLOCK: u8 = 0;
    /// `d` per block in f16, `m = -2^(bits - 1) d`.
    pub const SYMMETRIC: u8 = 1;
    /// `D` and `M` per 256 values in f16, `s` and `n` per block in bytes.
    pub const SUPER: u8 = 2;
    /// `D` per 256 values in f16, a signed `s` per half block, `m = -32d`.
    pub const HALVES: u8 = 3;
}

impl LowBitFormat {
    /// Bits per value.
    pub fn bits(self) -> u32 {
        match self {
            LowBitFormat::Q4_0 | LowBitFormat::Q4_1 | LowBitFormat::Q4K => 4,
            LowBitFormat::Q5_0 | LowBitFormat::Q5_1 | LowBitFormat::Q5K => 5,
            LowBitFormat::Q6K => 6,
        }
    }

    /// Where the format keeps its scales (one of [`scaling`]'s).
    pub(super) fn scaling(self) -> u8 {
        match self {
            LowBitFormat::Q4_1 | LowBitFormat::Q5_1 => scaling::BLOCK,
            LowBitFormat::Q4_0 | LowBitFormat::Q5_0 => scaling::SYMMETRIC,
            LowBitFormat::Q4K | LowBitFormat::Q5K => scaling::SUPER,
            LowBitFormat::Q6K => scaling::HALVES,
        }
    }

    /// Values per block that share `D` (K-quants: 256) or a scale (32).
    pub fn values_per_block(self) -> usize {
        match self.scaling() {
            scaling::SUPER | scaling::HALVES => SUPER * BLOCK,
            _ => BLOCK,
        }
    }
}

/// Bit masks per block of one tile for each bit above the fourth: that bit of the low and of the
/// high nibbles of each group vector.
pub(super) const MASKS_PER_BLOCK: usize = 2 * GROUP;

/// A matrix in 4-, 5- or 6-bit blocks, in tiles of 16 rows (the last tile padded with zero rows).
#[derive(Debug, Clone)]
pub struct LowBitMatrix {
    pub(super) rows: usize,
    cols: usize,
    format: LowBitFormat,
    pub(super) blocks: usize,
    /// `[tile][block][group g < 4][row in tile][byte j < 4]`: the low nibble is column
    /// `4g + j` of the block, the high nibble column `16 + 4g + j`.
    pub(super) quants: Vec<u8>,
    /// The fifth bits of 5- and 6-bit values, `[tile][block][group g][low, high]`: bit `4r + j`
    /// is the fifth bit of the low (or high) nibble of byte `4r + j` of that group's vector.
    /// Empty for the 4-bit formats.
    pub(super) fifth: Vec<u64>,
    /// The sixth bits of 6-bit values, as `fifth`; empty for the others.
    pub(super) sixth: Vec<u64>,
    /// `d` per `[tile][block][row in tile]` (Q4_0-Q5_1), `D` per `[tile][block of 256][row]`
    /// (K-quants).
    pub(super) scales: Vec<f16>,
    /// `m` (Q4_1, Q5_1) or `M` (Q4_K, Q5_K), indexed as `scales`; empty for the others.
    pub(super) mins: Vec<f16>,
    /// The K-quants' multipliers, `[tile][block][TILE_SUB_BYTES]`: Q4_K and Q5_K's `s` of the 16
    /// rows then their `n`; Q6_K's signed `s` of the first half block's rows then the second's.
    pub(super) sub: Vec<u8>,
}

impl LowBitMatrix {
    /// A matrix of zeros in `format` (`cols` a positive multiple of its blocks' values).
    pub(super) fn zeros(rows: usize, cols: usize, format: LowBitFormat) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(format.values_per_block()) {
            return None;
        }
        let blocks = cols / BLOCK;
        let tiles = rows.div_ceil(TILE);
        let masks = |bits| if format.bits() >= bits { tiles * blocks * MASKS_PER_BLOCK } else { 0 };
        let kind = format.scaling();
        let per_scale = if matches!(kind, scaling::SUPER | scaling::HALVES) { SUPER } else { 1 };
        let scales = tiles * blocks / per_scale * TILE;
        Some(Self {
            rows,
            cols,
            format,
            blocks,
            quants: vec![0u8; tiles * blocks * TILE_BLOCK_BYTES],
            fifth: vec![0u64; masks(5)],
            sixth: vec![0u64; masks(6)],
            scales: vec![f16::ZERO; scales],
            mins: vec![f16::ZERO; if matches!(kind, scaling::BLOCK | scaling::SUPER) { scales } else { 0 }],
            sub: vec![0u8; if per_scale == SUPER { tiles * blocks * TILE_SUB_BYTES } else { 0 }],
        })
    }

    /// Quantizes `values` (`rows × cols`, row-major) as llama.cpp's reference quantizer of
    /// Q4_0, Q4_1, Q5_0 or Q5_1 does; `None` for the K-quants (read from a file's blocks with
    /// [`LowBitMatrix::from_ggml`]) or unless `cols` is a positive multiple of 32.
    pub fn quantize(values: &[f32], rows: usize, cols: usize, format: LowBitFormat) -> Option<Self> {
        if values.len() != rows * cols || format.values_per_block() != BLOCK {
            return None;
        }
        let mut matrix = Self::zeros(rows, cols, format)?;
        for (row, values) in values.chunks(cols).enumerate() {
            for (b, block) in values.chunks(BLOCK).enumerate() {
                let (q, d, m) = quantize_block(block, format);
                let at = matrix.scale_index(row, b);
                matrix.scales[at] = d;
                if !matrix.mins.is_empty() {
                    matrix.mins[at] = m;
                }
                for (c, v) in q.into_iter().enumerate() {
                    matrix.put(row, b, c, v);
                }
            }
        }
        Some(matrix)
    }

    /// Where `d` (and `m`, `D`, `M`) of block `b` of `row` is.
    pub(super) fn scale_index(&self, row: usize, b: usize) -> usize {
        let (tile, r) = (row / TILE, row % TILE);
        match self.format.scaling() {
            scaling::SUPER | scaling::HALVES => (tile * self.blocks / SUPER + b / SUPER) * TILE + r,
            _ => (tile * self.blocks + b) * TILE + r,
        }
    }

    /// Where the K-quants' multiplier `which` (0: `s` or the first half's `s`; 1: `n` or the
    /// second half's `s`) of block `b` of `row` is.
    pub(super) fn sub_index(&self, row: usize, b: usize, which: usize) -> usize {
        let (tile, r) = (row / TILE, row % TILE);
        (tile * self.blocks + b) * TILE_SUB_BYTES + which * TILE + r
    }

    /// Stores value `q` as column `c` of block `b` of `row` (in a matrix of zeros there).
    pub(super) fn put(&mut self, row: usize, b: usize, c: usize, q: u8) {
        let (tile, r) = (row / TILE, row % TILE);
        let (at, high) = Self::index(tile, self.blocks, b, r, c);
        self.quants[at] |= if high { (q & 0x0F) << 4 } else { q & 0x0F };
        let (mask, bit) = Self::high_bit_index(tile, self.blocks, b, r, c);
        if q & 0x10 != 0 {
            self.fifth[mask] |= 1 << bit;
        }
        if q & 0x20 != 0 {
            self.sixth[mask] |= 1 << bit;
        }
    }

    /// The mask that holds the fifth (or, in the sixth-bit plane, sixth) bit of value `c` of block `b` of row `r` of
    /// `tile`, and the bit.
    fn high_bit_index(tile: usize, blocks: usize, b: usize, r: usize, c: usize) -> (usize, usize) {
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
        let mut q = if high { self.quants[at] >> 4 } else { self.quants[at] & 0x0F };
        let (mask, bit) = Self::high_bit_index(tile, self.blocks, b, r, c);
        for (plane, value) in [(&self.fifth, 0x10), (&self.sixth, 0x20)] {
            if plane.get(mask).is_some_and(|m| m >> bit & 1 == 1) {
                q |= value;
            }
        }
        q
    }

    /// The scale and minimum of each half block of block `b` of `row`: value = `d · q + m`,
    /// but Q6_K's is `d · (q - 32)` (as llama.cpp rounds it; its `m` is returned as zero).
    fn half_scales(&self, row: usize, b: usize) -> [(f32, f32); 2] {
        let at = self.scale_index(row, b);
        let d = self.scales[at].to_f32();
        let sub = |which| self.sub[self.sub_index(row, b, which)];
        match self.format.scaling() {
            scaling::BLOCK => [(d, self.mins[at].to_f32()); 2],
            scaling::SYMMETRIC => [(d, -((1 << (self.format.bits() - 1)) as f32) * d); 2],
            scaling::SUPER => [(d * f32::from(sub(0)), -(self.mins[at].to_f32() * f32::from(sub(1)))); 2],
            _halves => [0, 1].map(|h| (d * f32::from(sub(h) as i8), 0.0)),
        }
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

    /// Bytes read by one product: values, high bits, scales, minimums and multipliers (padding
    /// rows included).
    pub fn bytes(&self) -> usize {
        self.quants.len()
            + 8 * (self.fifth.len() + self.sixth.len())
            + 2 * (self.scales.len() + self.mins.len())
            + self.sub.len()
    }

    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.rows).flat_map(|row| self.dequantize_row(row)).collect()
    }

    /// Row `row` (`< rows`) as f32 values.
    pub fn dequantize_row(&self, row: usize) -> Vec<f32> {
        let (tile, r) = (row / TILE, row % TILE);
        let mut values = Vec::with_capacity(self.cols);
        for b in 0..self.blocks {
            let halves = self.half_scales(row, b);
            values.extend((0..BLOCK).map(|c| {
                let (d, m) = halves[c / 16];
                let q = self.value(tile, b, r, c);
                if self.format.scaling() == scaling::HALVES {
                    d * f32::from(i16::from(q) - 32)
                } else {
                    d * f32::from(q) + m
                }
            }));
        }
        values
    }

    /// Writes `out[i, row]` for every input row `i` and every real row of `tile`.
    ///
    /// # Safety
    /// `tile` must be one of the matrix's tiles, `out` must take `a.m` rows of the matrix's `rows`
    /// outputs, and no one
    /// else may read or write the outputs of the tile's rows during the call; for Q6_K, `a` must
    /// hold its half sums.
    pub(super) unsafe fn tile(&self, path: Path, a: &Activations, tile: usize, out: Out) {
        let masks = self.quants.len() / TILE_BLOCK_BYTES * MASKS_PER_BLOCK;
        debug_assert_eq!(self.fifth.len(), if self.format.bits() >= 5 { masks } else { 0 });
        debug_assert_eq!(self.sixth.len(), if self.format.bits() >= 6 { masks } else { 0 });
        debug_assert!(self.format.scaling() != scaling::HALVES || a.low_sums.len() == a.sums.len());
        #[cfg(target_arch = "x86_64")]
        use super::lowbit_x86::{tile_avx2, tile_vnni};
        // SAFETY (every arm): `Path::choose` picked a vector path only after detecting its
        // features (AVX2, FMA and F16C; AVX-512F, BW and VNNI); `zeros` made the high-bit planes
        // and multipliers of the format each arm names; the rest is this function's contract.
        unsafe {
            match (path, self.format) {
                (Path::Scalar, _) => scalar_tile(self, a, tile, out),
                #[cfg(target_arch = "x86_64")]
                (Path::Avx2, LowBitFormat::Q4_0) => tile_avx2::<4, { scaling::SYMMETRIC }>(self, a, tile, out),
                #[cfg(target_arch = "x86_64")]
                (Path::Avx2, LowBitFormat::Q4_1) => tile_avx2::<4, { scaling::BLOCK }>(self, a, tile, out),
                #[cfg(target_arch = "x86_64")]
                (Path::Avx2, LowBitFormat::Q5_0) => tile_avx2::<5, { scaling::SYMMETRIC }>(self, a, tile, out),
                #[cfg(target_arch = "x86_64")]
                (Path::Avx2, LowBitFormat::Q5_1) => tile_avx2::<5, { scaling::BLOCK }>(self, a, tile, out),
                #[cfg(target_arch = "x86_64")]
                (Path::Avx2, LowBitFormat::Q4K) => tile_avx2::<4, { scaling::SUPER }>(self, a, tile, out),
                #[cfg(target_arch = "x86_64")]
                (Path::Avx2, LowBitFormat::Q5K) => tile_avx2::<5, { scaling::SUPER }>(self, a, tile, out),
                #[cfg(target_arch = "x86_64")]
                (Path::Avx2, LowBitFormat::Q6K) => tile_avx2::<6, { scaling::HALVES }>(self, a, tile, out),
                #[cfg(target_arch = "x86_64")]
                (Path::Vnni, LowBitFormat::Q4_0) => tile_vnni::<4, { scaling::SYMMETRIC }>(self, a, tile, out),
                #[cfg(target_arch = "x86_64")]
                (Path::Vnni, LowBitFormat::Q4_1) => tile_vnni::<4, { scaling::BLOCK }>(self, a, tile, out),
                #[cfg(target_arch = "x86_64")]
                (Path::Vnni, LowBitFormat::Q5_0) => tile_vnni::<5, { scaling::SYMMETRIC }>(self, a, tile, out),
                #[cfg(target_arch = "x86_64")]
                (Path::Vnni, LowBitFormat::Q5_1) => tile_vnni::<5, { scaling::BLOCK }>(self, a, tile, out),
                #[cfg(target_arch = "x86_64")]
                (Path::Vnni, LowBitFormat::Q4K) => tile_vnni::<4, { scaling::SUPER }>(self, a, tile, out),
                #[cfg(target_arch = "x86_64")]
                (Path::Vnni, LowBitFormat::Q5K) => tile_vnni::<5, { scaling::SUPER }>(self, a, tile, out),
                #[cfg(target_arch = "x86_64")]
                (Path::Vnni, LowBitFormat::Q6K) => tile_vnni::<6, { scaling::HALVES }>(self, a, tile, out),
            }
        }
    }
}

/// One block of Q4_0-Q5_1 as llama.cpp's reference quantizers compute it: values, and `d`, `m`
/// in f16.
fn quantize_block(block: &[f32], format: LowBitFormat) -> ([u8; BLOCK], f16, f16) {
    let mut q = [0u8; BLOCK];
    let top = (1i32 << format.bits()) - 1;
    if format.scaling() == scaling::SYMMETRIC {
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
    } else {
        let (min, max) = block.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let d = (max - min) / top as f32;
        let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (dst, v) in q.iter_mut().zip(block) {
            *dst = (((v - min) * inverse + 0.5) as i32).clamp(0, top) as u8;
        }
        (q, f16::from_f32(d), f16::from_f32(min))
    }
}

/// # Safety
/// As [`LowBitMatrix::tile`].
unsafe fn scalar_tile(w: &LowBitMatrix, a: &Activations, tile: usize, out: Out) {
    for r in 0..tile_rows(w.rows, tile) {
        let row = tile * TILE + r;
        for i in 0..a.m {
            let sum: f32 = (0..w.blocks)
                .map(|b| {
                    let xa = i * w.blocks + b;
                    let halves = w.half_scales(row, b);
                    (0..2)
                        .map(|h| {
                            let columns = 16 * h..16 * h + 16;
                            let x = &a.quants[xa * BLOCK..][columns.clone()];
                            let xsum: i32 = x.iter().map(|&v| i32::from(v)).sum();
                            let dot: i32 =
                                columns.zip(x).map(|(c, &v)| i32::from(w.value(tile, b, r, c)) * i32::from(v)).sum();
                            let (d, m) = halves[h];
                            if w.format.scaling() == scaling::HALVES {
                                a.scales[xa] * d * (dot - 32 * xsum) as f32
                            } else {
                                a.scales[xa] * (d * dot as f32 + m * xsum as f32)
                            }
                        })
                        .sum::<f32>()
                })
                .sum();
            // SAFETY: `i < m` and the row `< n`, inside the `m × n` output, ours (contract).
            unsafe { *out.at(i, row) = sum };
        }
    }
}
