//! `out[m, n] = x[m, k] · w[n, k]ᵀ` with `w` quantized in blocks of 32 values (Q8_0, or 4- to
//! 6-bit values with a scale and a minimum per block or half block) and `x` quantized to int8
//! per block for each call, so that each block is an integer dot product; or `w` in F16 or
//! BF16, kept as a file stores it, against `x` as it is (`half`).
//!
//! Every format repacks a matrix at load into tiles of 16 rows. Within a block, each group of 4
//! columns holds the 16 rows' values side by side, so one `vpdpbusd` multiplies 4 broadcast
//! activation bytes into 16 rows' sums at once: a tile's outputs come out as one vector with no
//! horizontal sums, the weights stream from memory in order, and each group is read once for
//! all input rows (a forward over 2 tokens reads the weights once, as one over 1 token does).
use crate::isa::{Isa, Kind};
use crate::pool::{self, OutPtr};
use activations::{Activations, ACTIVATIONS};

mod activations;
mod half;
#[cfg(target_arch = "x86_64")]
mod half_x86;
mod lowbit;
mod lowbit_ggml;
#[cfg(target_arch = "x86_64")]
mod lowbit_x86;
mod q8;
#[cfg(target_arch = "x86_64")]
mod q8_x86;

pub use half::{HalfFormat, HalfMatrix};
pub use lowbit::{LowBitFormat, LowBitMatrix};
pub use q8::Q8Matrix;

/// Values per block.
pub const BLOCK: usize = 32;
/// Output rows per tile.
const TILE: usize = 16;
/// Columns per group: the bytes one `vpdpbusd` lane multiplies.
const GROUP: usize = 4;

/// A weight matrix in one of the quantized formats (or in 16-bit floats), or several stacked
/// (their rows one after another: a GGUF file's query, key and value projections, each kept in
/// the type it is stored in, read as one matrix).
#[derive(Debug, Clone)]
pub enum QuantMatrix {
    Q8_0(Q8Matrix),
    LowBit(LowBitMatrix),
    Half(HalfMatrix),
    Stacked(Vec<QuantMatrix>),
}

impl QuantMatrix {
    /// `parts` stacked, their rows one after another; `None` unless there are some, of one
    /// width, none of them stacked itself.
    pub fn stacked(parts: Vec<QuantMatrix>) -> Option<Self> {
        let cols = parts.first()?.cols();
        let flat = parts.iter().all(|part| part.cols() == cols && !matches!(part, QuantMatrix::Stacked(_)));
        flat.then_some(QuantMatrix::Stacked(parts))
    }

    pub fn rows(&self) -> usize {
        match self {
            QuantMatrix::Q8_0(w) => w.rows(),
            QuantMatrix::LowBit(w) => w.rows(),
            QuantMatrix::Half(w) => w.rows(),
            QuantMatrix::Stacked(parts) => parts.iter().map(QuantMatrix::rows).sum(),
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            QuantMatrix::Q8_0(w) => w.cols(),
            QuantMatrix::LowBit(w) => w.cols(),
            QuantMatrix::Half(w) => w.cols(),
            QuantMatrix::Stacked(parts) => parts.first().map_or(0, QuantMatrix::cols),
        }
    }

    /// Bytes read by one product.
    pub fn bytes(&self) -> usize {
        match self {
            QuantMatrix::Q8_0(w) => w.bytes(),
            QuantMatrix::LowBit(w) => w.bytes(),
            QuantMatrix::Half(w) => w.bytes(),
            QuantMatrix::Stacked(parts) => parts.iter().map(QuantMatrix::bytes).sum(),
        }
    }

    pub fn dequantize(&self) -> Vec<f32> {
        match self {
            QuantMatrix::Q8_0(w) => w.dequantize(),
            QuantMatrix::LowBit(w) => w.dequantize(),
            QuantMatrix::Half(w) => w.dequantize(),
            QuantMatrix::Stacked(parts) => parts.iter().flat_map(QuantMatrix::dequantize).collect(),
        }
    }

    /// Row `row` as f32 values; `None` past the last row.
    pub fn dequantize_row(&self, row: usize) -> Option<Vec<f32>> {
        if row >= self.rows() {
            return None;
        }
        match self {
            QuantMatrix::Q8_0(w) => Some(w.dequantize_row(row)),
            QuantMatrix::LowBit(w) => Some(w.dequantize_row(row)),
            QuantMatrix::Half(w) => Some(w.dequantize_row(row)),
            QuantMatrix::Stacked(parts) => {
                let mut row = row;
                for part in parts {
                    if row < part.rows() {
                        return part.dequantize_row(row);
                    }
                    row -= part.rows();
                }
                None
            }
        }
    }

    /// The unstacked matrices, in order.
    fn parts(&self) -> Vec<Matrix<'_>> {
        match self {
            QuantMatrix::Q8_0(w) => vec![Matrix::Q8(w)],
            QuantMatrix::LowBit(w) => vec![Matrix::LowBit(w)],
            QuantMatrix::Half(w) => vec![Matrix::Half(w)],
            QuantMatrix::Stacked(parts) => parts.iter().flat_map(QuantMatrix::parts).collect(),
        }
    }
}

/// Computes `out = x · wᵀ`; `x` is `m × w.cols()`, `out` is `m × w.rows()`, row-major.
pub fn quant_linear(isa: Isa, x: &[f32], m: usize, w: &QuantMatrix, out: &mut [f32]) {
    run(isa, x, m, &w.parts(), out)
}

/// [`quant_linear`] for a Q8_0 matrix.
pub fn q8_linear(isa: Isa, x: &[f32], m: usize, w: &Q8Matrix, out: &mut [f32]) {
    run(isa, x, m, &[Matrix::Q8(w)], out)
}

/// [`quant_linear`] for a low-bit matrix.
pub fn low_bit_linear(isa: Isa, x: &[f32], m: usize, w: &LowBitMatrix, out: &mut [f32]) {
    run(isa, x, m, &[Matrix::LowBit(w)], out)
}

/// A borrowed matrix of any format.
#[derive(Clone, Copy)]
enum Matrix<'a> {
    Q8(&'a Q8Matrix),
    LowBit(&'a LowBitMatrix),
    Half(&'a HalfMatrix),
}

impl Matrix<'_> {
    fn rows(self) -> usize {
        match self {
            Matrix::Q8(w) => w.rows(),
            Matrix::LowBit(w) => w.rows(),
            Matrix::Half(w) => w.rows(),
        }
    }

    fn cols(self) -> usize {
        match self {
            Matrix::Q8(w) => w.cols(),
            Matrix::LowBit(w) => w.cols(),
            Matrix::Half(w) => w.cols(),
        }
    }
}

/// Where a product's outputs go: input row `i`'s output for weight row `j` at
/// `i · stride + j` (a stacked matrix's part writes its own columns of the whole output).
#[derive(Clone, Copy)]
struct Out {
    ptr: OutPtr,
    stride: usize,
}

impl Out {
    /// The output of input row `i` for weight row `j`.
    ///
    /// # Safety
    /// `(i, j)` must lie inside the output.
    unsafe fn at(self, i: usize, j: usize) -> *mut f32 {
        // SAFETY: the caller's contract.
        unsafe { self.ptr.add(i * self.stride + j) }
    }
}

/// The product of `x` and `parts` stacked: the tiles of every part are split across threads
/// together, each part writing its columns of the `m × n` output.
fn run(isa: Isa, x: &[f32], m: usize, parts: &[Matrix], out: &mut [f32]) {
    let n: usize = parts.iter().map(|part| part.rows()).sum();
    let k = parts.first().map_or(0, |part| part.cols());
    assert!(parts.iter().all(|part| part.cols() == k), "quant_linear: stacked parts of different widths");
    assert!(x.len() >= m * k && out.len() >= m * n, "quant_linear: buffer too small");
    assert!(isa.available(), "quant_linear: {isa:?} is not supported by this CPU");
    let path = Path::choose(isa);
    // Each part's first tile in the run, and first output column.
    let mut starts = Vec::with_capacity(parts.len());
    let (mut tiles, mut column) = (0, 0);
    for part in parts {
        starts.push((tiles, column));
        tiles += part.rows().div_ceil(TILE);
        column += part.rows();
    }
    let ptr = OutPtr(out.as_mut_ptr());
    ACTIVATIONS.with(|cell| {
        let mut a = cell.borrow_mut();
        // The 16-bit float formats read `x` as it is.
        if parts.iter().any(|part| !matches!(part, Matrix::Half(_))) {
            let halves = parts.iter().any(|part| matches!(part, Matrix::LowBit(w) if w.format() == LowBitFormat::Q6K));
            a.fill(path, x, m, k, halves);
        }
        let a = &*a;
        pool::split(tiles, m * n * k, |range| {
            for tile in range {
                let p = starts.partition_point(|&(first, _)| first <= tile) - 1;
                let (first, column) = starts[p];
                // SAFETY: `out` holds `m × n` values (asserted above) and part `p`'s outputs are
                // columns `column..column + rows` of each of its `m` rows, so `out` moved on by
                // `column` with stride `n` takes them; `tile - first` is one of the part's tiles,
                // and the pool hands each tile to one thread, so its outputs are this thread's
                // alone.
                unsafe {
                    let out = Out { ptr: OutPtr(ptr.add(column)), stride: n };
                    match parts[p] {
                        Matrix::Q8(w) => w.tile(path, a, tile - first, out),
                        Matrix::LowBit(w) => w.tile(path, a, tile - first, out),
                        Matrix::Half(w) => w.tile(path, x, m, tile - first, out),
                    }
                }
            }
        });
    });
}

/// One block of 32 values as int8: scale = max |v| / 127, values rounded to the nearest step.
fn quantize_block(block: &[f32]) -> ([i8; BLOCK], f32) {
    let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = max / 127.0;
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut q = [0i8; BLOCK];
    for (dst, v) in q.iter_mut().zip(block) {
        *dst = round(v * inverse).clamp(-127.0, 127.0) as i8;
    }
    (q, scale)
}

/// Half away from zero, as `f32::round`, but without a libm call (`as` truncates and saturates).
fn round(v: f32) -> f32 {
    ((v + 0.5f32.copysign(v)) as i32) as f32
}

/// The integer dot-product path, chosen once per call from what the CPU has.
#[derive(Clone, Copy)]
enum Path {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Vnni,
}

impl Path {
    fn choose(isa: Isa) -> Self {
        match isa.kind() {
            Kind::Scalar => Path::Scalar,
            #[cfg(target_arch = "x86_64")]
            // VNNI and BW (byte and word shifts) are AVX-512 extensions that `Isa` does not
            // track: checked here.
            Kind::Avx512
                if std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx512bw") =>
            {
                Path::Vnni
            }
            // F16C (the 4-bit scales' conversion) comes with every AVX2 CPU but is its own flag;
            // a VM that hid it would run both formats on the scalar path, not fault.
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512 | Kind::Avx2
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c") =>
            {
                Path::Avx2
            }
            _ => Path::Scalar,
        }
    }
}

/// How far ahead of the block being multiplied the tile kernels ask for weights: the
/// hardware prefetcher alone left a 4-row product waiting on memory (a 4-token SmolLM2 forward
/// took 8.0 ms without, 7.0 ms with; medians of interleaved runs).
#[cfg(target_arch = "x86_64")]
const PREFETCH_BYTES: usize = 2048;

/// Asks for the cache lines `PREFETCH_BYTES` past the `bytes` at `at`: a hint, which never
/// faults, so the addresses may run past the matrix's end (hence `wrapping_add`).
///
/// # Safety
/// The CPU must have SSE (every x86-64 CPU does).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch_ahead(at: *const u8, bytes: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for line in (0..bytes).step_by(64) {
        // SAFETY: a prefetch is a hint; it reads nothing and faults on no address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_BYTES + line) as *const i8) };
    }
}

/// Stores each of `acc` (the 16 rows of `tile` of a matrix of `rows`, for input rows `first..`)
/// into `out`, leaving out the padding rows of the last tile.
///
/// # Safety
/// The CPU must have AVX-512F; `out` must take input rows `first..first + acc.len()` of the
/// matrix's outputs, whose rows of `tile` are the caller's alone.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_tile_512(acc: &[std::arch::x86_64::__m512], rows: usize, tile: usize, first: usize, out: Out) {
    use std::arch::x86_64::*;
    let real = tile_rows(rows, tile);
    let mask: __mmask16 = if real == TILE { !0 } else { (1u16 << real) - 1 };
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: lanes `0..real` are rows `tile * 16 + r < rows` of input row `first + i`,
        // inside the output and the caller's alone (contract); the mask keeps the store to them.
        unsafe { _mm512_mask_storeu_ps(out.at(first + i, tile * TILE), mask, *acc) };
    }
}

/// [`store_tile_512`] for accumulators of two 8-row halves.
///
/// # Safety
/// As [`store_tile_512`], with AVX instead of AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx")]
unsafe fn store_tile_256(acc: &[[std::arch::x86_64::__m256; 2]], rows: usize, tile: usize, first: usize, out: Out) {
    use std::arch::x86_64::*;
    for (i, acc) in acc.iter().enumerate() {
        let mut lanes = [0f32; TILE];
        // SAFETY: `lanes` holds 16 floats, two stores of 8.
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[1]);
        }
        for (r, &v) in lanes.iter().enumerate().take(tile_rows(rows, tile)) {
            // SAFETY: row `tile * 16 + r < rows` of input `first + i`, the caller's (contract).
            unsafe { *out.at(first + i, tile * TILE + r) = v };
        }
    }
}

/// The real rows of `tile` in a matrix of `rows` (the last tile may be partly padding).
fn tile_rows(rows: usize, tile: usize) -> usize {
    (rows - tile * TILE).min(TILE)
}
