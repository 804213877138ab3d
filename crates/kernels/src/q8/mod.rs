//! `out[m, n] = x[m, k] · w[n, k]ᵀ` with `w` in Q8_0 (blocks of 32 int8 values and one scale)
//! and `x` quantized the same way per call, so each block is an integer dot product.
//!
//! The weights are repacked at load into tiles of 16 rows: for each block, 8 groups of 4
//! columns, and within a group the 4 bytes of each of the 16 rows side by side (64 bytes). One
//! `vpdpbusd` multiplies such a group by 4 activation bytes broadcast to every row and adds the
//! products into 16 lanes, one per output row, so a tile's outputs come out as one vector with
//! no horizontal sums, the weights stream from memory in order, and each group is read once
//! for all input rows (a forward over 2 tokens reads the weights once, as one over 1 token
//! does).
//!
//! The stored values are offset by 128 (`w + 128` as `u8`): `vpdpbusd` multiplies unsigned by
//! signed bytes. The offset adds `128 · Σx` to a block's dot product, which is subtracted once
//! per block. The AVX2 path flips the offset back (`xor 0x80`) and uses the sign trick instead.
use crate::isa::{Isa, Kind};
use crate::pool::{self, OutPtr};
use std::cell::RefCell;

#[cfg(target_arch = "x86_64")]
mod x86;

/// Values per block.
pub const BLOCK: usize = 32;
/// Output rows per tile.
const TILE: usize = 16;
/// Columns per group: the bytes one `vpdpbusd` lane multiplies.
const GROUP: usize = 4;
/// Bytes of one block of one tile.
const TILE_BLOCK_BYTES: usize = TILE * BLOCK;
/// What the stored weights are offset by.
const OFFSET: i32 = 128;

/// A matrix in Q8_0, in tiles of 16 rows (the last tile padded with zero rows).
#[derive(Debug, Clone)]
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    /// Blocks per row.
    blocks: usize,
    /// `[tile][block][group][row in tile][byte]`, offset by 128.
    quants: Vec<u8>,
    /// `[tile][block][row in tile]`.
    scales: Vec<f32>,
}

impl Q8Matrix {
    /// Quantizes `values` (`rows × cols`, row-major); `None` unless `cols` is a positive
    /// multiple of 32.
    pub fn quantize(values: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) || values.len() != rows * cols {
            return None;
        }
        let blocks = cols / BLOCK;
        let tiles = rows.div_ceil(TILE);
        let mut quants = vec![OFFSET as u8; tiles * blocks * TILE_BLOCK_BYTES];
        let mut scales = vec![0f32; tiles * blocks * TILE];
        for (row, values) in values.chunks(cols).enumerate() {
            let (tile, r) = (row / TILE, row % TILE);
            for (b, block) in values.chunks(BLOCK).enumerate() {
                let (q, scale) = quantize_block(block);
                scales[(tile * blocks + b) * TILE + r] = scale;
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
        self.quants.len() + 4 * self.scales.len()
    }

    pub fn dequantize(&self) -> Vec<f32> {
        let mut values = Vec::with_capacity(self.rows * self.cols);
        for row in 0..self.rows {
            let (tile, r) = (row / TILE, row % TILE);
            for b in 0..self.blocks {
                let scale = self.scales[(tile * self.blocks + b) * TILE + r];
                values.extend((0..BLOCK).map(|c| {
                    (i32::from(self.quants[Self::index(tile, self.blocks, b, r, c)]) - OFFSET) as f32 * scale
                }));
            }
        }
        values
    }
}

/// One block: scale = max |v| / 127, values rounded to the nearest step.
fn quantize_block(block: &[f32]) -> ([i8; BLOCK], f32) {
    let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = max / 127.0;
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut q = [0i8; BLOCK];
    for (dst, v) in q.iter_mut().zip(block) {
        // Half away from zero, as `f32::round`, but without a libm call (`as` truncates and
        // saturates; the scale keeps |v| · inverse within 127).
        let scaled = v * inverse;
        *dst = (scaled + 0.5f32.copysign(scaled)).clamp(-127.0, 127.0) as i8;
    }
    (q, scale)
}

/// `x` quantized for one call, `[input row][block]`; reused across calls.
#[derive(Default)]
struct Activations {
    m: usize,
    quants: Vec<i8>,
    scales: Vec<f32>,
    /// `128 · Σx` of each block: what the weights' offset adds to its dot product.
    offsets: Vec<i32>,
}

impl Activations {
    fn fill(&mut self, x: &[f32], m: usize, cols: usize) {
        let blocks = m * cols / BLOCK;
        self.m = m;
        self.quants.resize(blocks * BLOCK, 0);
        self.scales.resize(blocks, 0.0);
        self.offsets.resize(blocks, 0);
        for (at, block) in x[..m * cols].chunks(BLOCK).enumerate() {
            let (q, scale) = quantize_block(block);
            self.quants[at * BLOCK..(at + 1) * BLOCK].copy_from_slice(&q);
            self.scales[at] = scale;
            self.offsets[at] = OFFSET * q.iter().map(|&v| i32::from(v)).sum::<i32>();
        }
    }
}

thread_local! {
    /// The calling thread's quantized activations, kept between calls so that a decode step
    /// does not allocate for them.
    static ACTIVATIONS: RefCell<Activations> = RefCell::new(Activations::default());
}

/// Computes `out = x · wᵀ`; `x` is `m × w.cols()`, `out` is `m × w.rows()`, row-major.
pub fn q8_linear(isa: Isa, x: &[f32], m: usize, w: &Q8Matrix, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert!(x.len() >= m * k && out.len() >= m * n, "q8_linear: buffer too small");
    assert!(isa.available(), "q8_linear: {isa:?} is not supported by this CPU");
    let path = Path::choose(isa);
    let out = OutPtr(out.as_mut_ptr());
    ACTIVATIONS.with(|cell| {
        let mut a = cell.borrow_mut();
        a.fill(x, m, k);
        let a = &*a;
        pool::split(n.div_ceil(TILE), m * n * k, |tiles| {
            for tile in tiles {
                // SAFETY: `out` holds `m × n` values (asserted above), `tile` is one of the
                // matrix's tiles, and the pool hands each tile to one thread, so its outputs are
                // this thread's alone.
                unsafe { path.tile(w, a, tile, out) }
            }
        });
    });
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
            // VNNI is an extension of AVX-512 that `Isa` does not track: checked here.
            Kind::Avx512 if std::arch::is_x86_feature_detected!("avx512vnni") => Path::Vnni,
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512 | Kind::Avx2
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") =>
            {
                Path::Avx2
            }
            _ => Path::Scalar,
        }
    }

    /// Writes `out[i, row]` for every input row `i` and every real row of `tile`.
    ///
    /// # Safety
    /// `tile` must be one of `w`'s tiles, `out` must hold `a.m × w.rows` values, and no one else
    /// may read or write the outputs of the tile's rows during the call.
    unsafe fn tile(self, w: &Q8Matrix, a: &Activations, tile: usize, out: OutPtr) {
        match self {
            // SAFETY: forwarded from this function's contract.
            Path::Scalar => unsafe { scalar_tile(w, a, tile, out) },
            // SAFETY: `choose` picked this path only after detecting AVX2 and FMA; the rest is
            // this function's contract.
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => unsafe { x86::tile_avx2(w, a, tile, out) },
            // SAFETY: as above, with AVX-512F (`Kind::Avx512`) and VNNI detected.
            #[cfg(target_arch = "x86_64")]
            Path::Vnni => unsafe { x86::tile_vnni(w, a, tile, out) },
        }
    }
}

/// The real rows of `tile` (the last tile may be partly padding).
fn tile_rows(w: &Q8Matrix, tile: usize) -> usize {
    (w.rows - tile * TILE).min(TILE)
}

/// # Safety
/// As [`Path::tile`].
unsafe fn scalar_tile(w: &Q8Matrix, a: &Activations, tile: usize, out: OutPtr) {
    for r in 0..tile_rows(w, tile) {
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
                    dot as f32 * w.scales[(tile * w.blocks + b) * TILE + r] * a.scales[xa]
                })
                .sum();
            // SAFETY: `i < m` and the row `< n`, inside the `m × n` output, ours (contract).
            unsafe { *out.0.add(i * w.rows + tile * TILE + r) = sum };
        }
    }
}
