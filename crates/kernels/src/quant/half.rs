//! F16 and BF16 weights kept as a file stores them: 16-bit floats in tiles of 16 rows, each
//! column's 16 values side by side, so that one load and one conversion give a vector of the
//! tile's 16 rows for a multiply-add with a broadcast input value (no horizontal sums, as in the
//! int8 tiles). The inputs stay f32: unlike the int8 formats there is no block scale to share,
//! and the product is then exact up to f32 summation order.
use super::{tile_rows, Out, Path, TILE};
use half::{bf16, f16};

/// Which 16-bit float the values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfFormat {
    F16,
    BF16,
}

impl HalfFormat {
    /// `value` as this format's bits, rounded to the nearest.
    fn bits(self, value: f32) -> u16 {
        match self {
            HalfFormat::F16 => f16::from_f32(value).to_bits(),
            HalfFormat::BF16 => bf16::from_f32(value).to_bits(),
        }
    }

    fn value(self, bits: u16) -> f32 {
        match self {
            HalfFormat::F16 => f16::from_bits(bits).to_f32(),
            HalfFormat::BF16 => bf16::from_bits(bits).to_f32(),
        }
    }
}

/// A matrix of 16-bit floats, in tiles of 16 rows (the last padded with zero rows).
#[derive(Debug, Clone)]
pub struct HalfMatrix {
    pub(super) rows: usize,
    pub(super) cols: usize,
    format: HalfFormat,
    /// `[tile][column][row in tile]`.
    pub(super) values: Vec<u16>,
}

impl HalfMatrix {
    /// `values` (`rows × cols`, row-major) rounded to `format`; `None` unless `cols` is positive
    /// and `values` holds `rows × cols`.
    pub fn quantize(values: &[f32], rows: usize, cols: usize, format: HalfFormat) -> Option<Self> {
        if cols == 0 || values.len() != rows * cols {
            return None;
        }
        let mut tiled = vec![0u16; rows.div_ceil(TILE) * TILE * cols];
        for (row, values) in values.chunks(cols).enumerate() {
            for (c, &v) in values.iter().enumerate() {
                tiled[Self::index(cols, row, c)] = format.bits(v);
            }
        }
        Some(Self { rows, cols, format, values: tiled })
    }

    /// Where value `c` of `row` is stored.
    fn index(cols: usize, row: usize, c: usize) -> usize {
        ((row / TILE) * cols + c) * TILE + row % TILE
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn format(&self) -> HalfFormat {
        self.format
    }

    /// Bytes read by one product (padding rows included).
    pub fn bytes(&self) -> usize {
        2 * self.values.len()
    }

    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.rows).flat_map(|row| self.dequantize_row(row)).collect()
    }

    /// Row `row` (`< rows`) as f32 values.
    pub fn dequantize_row(&self, row: usize) -> Vec<f32> {
        (0..self.cols).map(|c| self.format.value(self.values[Self::index(self.cols, row, c)])).collect()
    }

    /// Writes `out[i, row]` for every input row `i < m` of `x` (`m × cols`) and every real row
    /// of `tile`.
    ///
    /// # Safety
    /// `tile` must be one of the matrix's tiles, `x` must hold `m × cols` values, `out` must take
    /// `m` rows of the matrix's outputs, and no one else may read or write the outputs of the
    /// tile's rows during the call.
    pub(super) unsafe fn tile(&self, path: Path, x: &[f32], m: usize, tile: usize, out: Out) {
        // SAFETY (every arm): `Path::choose` picked a vector path only after detecting its
        // features (AVX2, FMA and F16C; AVX-512F and BW); the rest is this function's contract.
        unsafe {
            match path {
                Path::Scalar => scalar_tile(self, x, m, tile, out),
                #[cfg(target_arch = "x86_64")]
                Path::Avx2 => super::half_x86::tile_avx2(self, x, m, tile, out),
                #[cfg(target_arch = "x86_64")]
                Path::Vnni => super::half_x86::tile_512(self, x, m, tile, out),
            }
        }
    }
}

/// # Safety
/// As [`HalfMatrix::tile`].
unsafe fn scalar_tile(w: &HalfMatrix, x: &[f32], m: usize, tile: usize, out: Out) {
    for r in 0..tile_rows(w.rows, tile) {
        for (i, x) in x.chunks_exact(w.cols).take(m).enumerate() {
            let sum: f32 = (0..w.cols)
                .map(|c| w.format.value(w.values[HalfMatrix::index(w.cols, tile * TILE + r, c)]) * x[c])
                .sum();
            // SAFETY: `i < m` and the row `< rows`, inside the output, ours (contract).
            unsafe { *out.at(i, tile * TILE + r) = sum };
        }
    }
}
