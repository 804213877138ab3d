//! Q8_0: blocks of 32 int8 values and one f16 scale, as llama.cpp keeps them. The stored values are offset by 128
//! (`w + 128` as `u8`), because `vpdpbusd` multiplies unsigned by signed bytes; the offset adds
//! `128 · Σx` to a block's dot product, which is subtracted once per block. The AVX2 path flips
//! the offset back (`xor 0x80`) and uses the sign trick instead.
use super::{quantize_block, tile_rows, Activations, Out, Path, BLOCK, GROUP, TILE};
use half::f16;

/// Bytes of one block of one tile.
pub(super) const TILE_BLOCK_BYTES: usize = TILE * BLOCK;
/// What the stored weights are offset by.
pub(super) const OFFSET: i32 = 128;

/// A matrix in Q8_0, in tiles of 16 rows (the last tile padded with zero rows).
#[derive(Debug, Clone)]
pub struct Q8Matrix {
    pub(super) rows: usize,
    cols: usize,
    /// Blocks per row.
    pub(super) blocks: usize,
    /// `[tile][block][group][row in tile][byte]`, offset by 128.
    pub(super) quants: Vec<u8>,
    /// `[tile][block][row in tile]`.
    pub(super) scales: Vec<f16>,
}

impl Q8Matrix {
    /// Quantizes `values` (`rows × cols`, row-major) as llama.cpp's reference quantizer does
    /// (values rounded with the f32 scale, which is kept in f16); `None` unless `cols` is a
    /// positive multiple of 32.
    pub fn quantize(values: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) || values.len() != rows * cols {
            return None;
        }
        let blocks = cols / BLOCK;
        let tiles = rows.div_ceil(TILE);
        let mut quants = vec![OFFSET as u8; tiles * blocks * TILE_BLOCK_BYTES];
        let mut scales = vec![f16::ZERO; tiles * blocks * TILE];
        for (row, values) in values.chunks(cols).enumerate() {
            let (tile, r) = (row / TILE, row % TILE);
            for (b, block) in values.chunks(BLOCK).enumerate() {
                let (q, scale) = quantize_block(block);
                scales[(tile * blocks + b) * TILE + r] = f16::from_f32(scale);
                for (c, v) in q.into_iter().enumerate() {
                    quants[Self::index(tile, blocks, b, r, c)] = (i32::from(v) + OFFSET) as u8;
                }
            }
        }
        Some(Self { rows, cols, blocks, quants, scales })
    }

    /// Where value `c` of block `b` of row `r` of `tile` is stored.
    fn index(tile: usize, blocks: usize, b: usize, r: usize, c: usize) -> usize {
        (tile * blocks + b) * TILE_BLOCK_BYTES + (c / GROUP) * TILE * GROUP + r * GROUP + c % GROUP
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes read by one product: the values and the scales (padding rows included).
    pub fn bytes(&self) -> usize {
        self.quants.len() + 2 * self.scales.len()
    }

    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.rows).flat_map(|row| self.dequantize_row(row)).collect()
    }

    /// Row `row` (`< rows`) as f32 values.
    pub fn dequantize_row(&self, row: usize) -> Vec<f32> {
        let (tile, r) = (row / TILE, row % TILE);
        let mut values = Vec::with_capacity(self.cols);
        for b in 0..self.blocks {
            let scale = self.scales[(tile * self.blocks + b) * TILE + r].to_f32();
            values
                .extend((0..BLOCK).map(|c| {
                    (i32::from(self.quants[Self::index(tile, self.blocks, b, r, c)]) - OFFSET) as f32 * scale
                }));
        }
        values
    }
}

impl Q8Matrix {
    /// Writes `out[i, row]` for every input row `i` and every real row of `tile`.
    ///
    /// # Safety
    /// `tile` must be one of the matrix's tiles, `out` must take `a.m` rows of the matrix's `rows`
    /// outputs, and no one
    /// else may read or write the outputs of the tile's rows during the call.
    pub(super) unsafe fn tile(&self, path: Path, a: &Activations, tile: usize, out: Out) {
        match path {
            // SAFETY: forwarded from this function's contract.
            Path::Scalar => unsafe { scalar_tile(self, a, tile, out) },
            // SAFETY: `Path::choose` picked this path only after detecting AVX2, FMA and F16C;
            // the rest is this function's contract.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { super::q8_x86::tile_avx2(self, a, tile, out) },
            // SAFETY: as above, with AVX-512F (`Kind::Avx512`), BW and VNNI detected.
            #[cfg(target_arch = "x86_64")]
            Path::Vnni => unsafe { super::q8_x86::tile_vnni(self, a, tile, out) },
        }
    }
}

/// # Safety
/// As [`Q8Matrix::tile`].
unsafe fn scalar_tile(w: &Q8Matrix, a: &Activations, tile: usize, out: Out) {
    for r in 0..tile_rows(w.rows, tile) {
        for i in 0..a.m {
            let sum: f32 = (0..w.blocks)
                .map(|b| {
                    let xa = i * w.blocks + b;
                    let dot: i32 = (0..BLOCK)
                        .map(|c| {
                            let q = i32::from(w.quants[Q8Matrix::index(tile, w.blocks, b, r, c)]);
                            (q - OFFSET) * i32::from(a.quants[xa * BLOCK + c])
                        })
                        .sum();
                    dot as f32 * w.scales[(tile * w.blocks + b) * TILE + r].to_f32() * a.scales[xa]
                })
                .sum();
            // SAFETY: `i < m` and the row `< n`, inside the `m × n` output, ours (contract).
            unsafe { *out.at(i, tile * TILE + r) = sum };
        }
    }
}
