//! Which vector instruction set the kernels run. The `#[target_feature]` code paths are only
//! sound on a CPU with those features, so an [`Isa`] is proof that this CPU has them: its field
//! is private, and the only ways to get one check the CPU first.

use std::fmt;

/// An instruction-set path of the kernels that this CPU can run.
///
/// Get one from [`Isa::detect`] (the fastest) or [`Isa::supported`] (all of them); nothing else
/// outside this module can make one, so a value can't claim features the CPU lacks:
///
/// ```compile_fail
/// let forged = recyclegpt_kernels::Isa::Avx512;
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Isa(Kind);

/// The paths, fastest first. Crate code matches on this to dispatch; only this module wraps
/// one in an [`Isa`], and only after checking the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Avx512,
    Avx2,
    Scalar,
}

const ALL: [Kind; 3] = [Kind::Avx512, Kind::Avx2, Kind::Scalar];

impl Isa {
    /// The fastest path this CPU runs.
    pub fn detect() -> Self {
        // Scalar always qualifies, so the search never comes up empty.
        Isa(ALL.into_iter().find(|&kind| cpu_runs(kind)).unwrap_or(Kind::Scalar))
    }

    /// Every path this CPU runs, fastest first and ending with scalar (tests force each one).
    pub fn supported() -> Vec<Isa> {
        ALL.into_iter().filter(|&kind| cpu_runs(kind)).map(Isa).collect()
    }

    /// Whether this CPU runs `self`. Always true for a value obtained on this machine; the
    /// kernels assert it anyway, as a cheap second line of defence.
    pub fn available(self) -> bool {
        cpu_runs(self.0)
    }

    pub(crate) fn kind(self) -> Kind {
        self.0
    }

    /// A slower path than this one, when the CPU runs it: a kernel that cannot use its own path
    /// for some shape (a head size the vector width does not divide) steps down through this,
    /// never on the assumption that a bigger feature set implies a smaller one.
    pub(crate) fn fallback(self, kind: Kind) -> Option<Isa> {
        cpu_runs(kind).then_some(Isa(kind))
    }
}

/// Prints the path's name (`Avx512`, `Avx2`, `Scalar`), as the plain enum this replaced did.
impl fmt::Debug for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Whether the CPU has every feature the `#[target_feature]` attributes of `kind`'s code enable
/// (`avx512f` for the AVX-512 kernels, `avx2,fma` for the AVX2 ones; the quantized kernels check
/// their further extensions themselves, in `quant::Path`). Checked per path rather
/// than assumed from a bigger one, so a CPU (or VM) that reports AVX-512 without AVX2 is safe.
fn cpu_runs(kind: Kind) -> bool {
    match kind {
        Kind::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
        #[cfg(target_arch = "x86_64")]
        Kind::Avx2 => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
        #[cfg(not(target_arch = "x86_64"))]
        Kind::Avx512 | Kind::Avx2 => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_runs_from_the_detected_path_down_to_scalar() {
        let all = Isa::supported();
        assert_eq!(all.first(), Some(&Isa::detect()));
        assert_eq!(all.last().map(|isa| isa.kind()), Some(Kind::Scalar));
        assert!(all.iter().all(|isa| isa.available()));
    }
}
