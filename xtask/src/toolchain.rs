//! Finding (and on a fresh machine installing) a compiler, `core` sources and
//! bpf-linker that can build the eBPF crate. Two routes, because the BPF
//! target needs `-Z build-std=core` with the library sources of the very
//! same compiler: machines whose rustup nightly has no `rust-src` (and
//! cannot fetch it) use Debian's matched `rustc-web` + `rust-web-src`;
//! elsewhere the usual nightly with `rust-src` works (see `Route`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{apt, cmd};

/// Debian's rustc must be at least this new (aya-ebpf 0.2's rust-version;
/// bookworm's main suite has 1.85, the security suite 1.96).
pub const MIN_DEBIAN_RUSTC: (u32, u32) = (1, 87);

/// The LLVM the Debian route installs when nothing is there yet.
pub const DEFAULT_LLVM_MAJOR: u32 = 22;

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// How the eBPF crate gets built.
#[derive(Debug, Clone)]
pub enum Route {
    /// Route A: Debian's `rustc-web` (`/usr/bin/rustc`) with `rust-web-src`,
    /// unlocked with RUSTC_BOOTSTRAP=1, and a bpf-linker built against the
    /// distribution's LLVM of the same major version.
    Debian {
        rustc: PathBuf,
        /// `rustc -vV`'s release, e.g. `1.96.0`.
        release: String,
        llvm_major: u32,
        /// Directory holding `bpf-linker`.
        linker_dir: PathBuf,
    },
    /// Route B: rustup's nightly with its `rust-src` component and a
    /// bpf-linker from `cargo install bpf-linker`.
    Nightly {
        release: String,
        /// Directory holding `bpf-linker`.
        linker_dir: PathBuf,
    },
}

/// A usable eBPF toolchain.
#[derive(Debug, Clone)]
pub struct Toolchain {
    pub route: Route,
}

impl Toolchain {
    /// Finds a route, installing what is missing (apt packages, bpf-linker)
    /// and printing a line for each install. Silent and fast when everything
    /// is already there.
    pub fn ensure() -> Result<Self> {
        let toolchain = if let Some(debian) = DebianRustc::detect() {
            debian.into_toolchain()?
        } else if let Some(nightly) = detect_nightly() {
            nightly_toolchain(nightly)?
        } else {
            install_debian_packages()?;
            DebianRustc::detect()
                .context("Debian's rustc-web is still unusable after apt-get install")?
                .into_toolchain()?
        };
        // Used to check the objects' BTF, by the demo and by the tests.
        apt::ensure_programs(&[("bpftool", "bpftool")], "to inspect BPF objects and maps")?;
        Ok(toolchain)
    }

    /// One line naming the route, for summaries.
    pub fn describe(&self) -> String {
        match &self.route {
            Route::Debian {
                release,
                llvm_major,
                linker_dir,
                ..
            } => format!(
                "Debian rustc {release} (LLVM {llvm_major}) + {}",
                linker_dir.join("bpf-linker").display()
            ),
            Route::Nightly {
                release,
                linker_dir,
            } => format!(
                "rustup nightly {release} + {}",
                linker_dir.join("bpf-linker").display()
            ),
        }
    }

    /// A `cargo` command set up to build for the BPF target with this
    /// toolchain (subcommand and arguments still to add).
    pub fn cargo(&self) -> Command {
        match &self.route {
            Route::Debian {
                rustc, linker_dir, ..
            } => {
                let mut c = cmd::cargo();
                c.env("RUSTC", rustc)
                    .env("RUSTC_BOOTSTRAP", "1")
                    .env("PATH", cmd::path_with(&[linker_dir]));
                c
            }
            Route::Nightly { linker_dir, .. } => {
                let mut c = Command::new("rustup");
                c.args(["run", "nightly", "cargo"])
                    .env_remove("RUSTUP_TOOLCHAIN")
                    .env_remove("RUSTC")
                    .env_remove("CARGO")
                    .env("RUSTUP_AUTO_INSTALL", "0")
                    .env("PATH", cmd::path_with(&[linker_dir]));
                c
            }
        }
    }
}

struct DebianRustc {
    release: String,
    llvm_major: u32,
}

impl DebianRustc {
    /// `/usr/bin/rustc`, new enough, with the library sources in its sysroot.
    fn detect() -> Option<Self> {
        let (release, llvm_major) = rustc_version(Command::new(DEBIAN_RUSTC))?;
        if parse_release(&release)? < MIN_DEBIAN_RUSTC {
            return None;
        }
        has_library_sources(Command::new(DEBIAN_RUSTC)).then_some(Self {
            release,
            llvm_major,
        })
    }

    fn into_toolchain(self) -> Result<Toolchain> {
        let linker_dir = ensure_debian_linker(self.llvm_major)?;
        Ok(Toolchain {
            route: Route::Debian {
                rustc: PathBuf::from(DEBIAN_RUSTC),
                release: self.release,
                llvm_major: self.llvm_major,
                linker_dir,
            },
        })
    }
}

/// Where route A keeps its bpf-linker: `$HOME/.cache/lb-xdp/bpf-linker-llvm<N>`
/// (the `--root` of `cargo install`; the binary is in `bin/`).
pub fn debian_linker_root(llvm_major: u32) -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home)
        .join(".cache/lb-xdp")
        .join(format!("bpf-linker-llvm{llvm_major}")))
}

fn ensure_debian_linker(llvm_major: u32) -> Result<PathBuf> {
    let root = debian_linker_root(llvm_major)?;
    let bin_dir = root.join("bin");
    if bin_dir.join("bpf-linker").exists() {
        return Ok(bin_dir);
    }
    let llvm = PathBuf::from(format!("/usr/lib/llvm-{llvm_major}"));
    if !llvm.join("bin/llvm-config").exists() {
        let package = format!("llvm-{llvm_major}-dev");
        apt::install(&[&package], "bpf-linker links against libLLVM")?;
    }
    eprintln!(
        "xtask: installing bpf-linker for LLVM {llvm_major} into {} (about 2 minutes, once)...",
        root.display()
    );
    cmd::run(
        cmd::cargo()
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{llvm_major}"))
            .arg("--root")
            .arg(&root)
            .env("LLVM_PREFIX", &llvm)
            .env("PATH", cmd::path_with(&[&llvm.join("bin")]))
            .env_remove("RUSTC")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR"),
    )
    .context("installing bpf-linker failed")?;
    if !bin_dir.join("bpf-linker").exists() {
        bail!("cargo install left no bpf-linker in {}", bin_dir.display());
    }
    Ok(bin_dir)
}

fn rustup_nightly(tool: &str) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", tool])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("RUSTUP_AUTO_INSTALL", "0");
    c
}

/// rustup's nightly, if installed with rust-src; returns its release.
fn detect_nightly() -> Option<String> {
    cmd::which("rustup")?;
    let (release, _llvm) = rustc_version(rustup_nightly("rustc"))?;
    has_library_sources(rustup_nightly("rustc")).then_some(release)
}

fn nightly_toolchain(release: String) -> Result<Toolchain> {
    let linker_dir = match find_cargo_bin("bpf-linker") {
        Some(dir) => dir,
        None => {
            eprintln!("xtask: installing bpf-linker with `cargo install` (a few minutes, once)...");
            cmd::run(
                rustup_nightly("cargo")
                    .args(["install", "bpf-linker"])
                    .env_remove("RUSTC")
                    .env_remove("CARGO_TARGET_DIR"),
            )
            .context("cargo install bpf-linker failed")?;
            find_cargo_bin("bpf-linker").context("bpf-linker not found after cargo install")?
        }
    };
    Ok(Toolchain {
        route: Route::Nightly {
            release,
            linker_dir,
        },
    })
}

/// The directory of `program` on PATH or in `$CARGO_HOME/bin`.
fn find_cargo_bin(program: &str) -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let candidate = cargo_home.join("bin").join(program);
    if candidate.exists() {
        return candidate.parent().map(Path::to_path_buf);
    }
    cmd::which(program).and_then(|p| p.parent().map(Path::to_path_buf))
}

/// Packages of route A, installed when no route works.
fn install_debian_packages() -> Result<()> {
    let llvm_dev = format!("llvm-{DEFAULT_LLVM_MAJOR}-dev");
    let packages = ["rustc-web", "rust-web-src", llvm_dev.as_str(), "bpftool"];
    let all_installed = packages.iter().all(|p| apt::is_installed(p));
    if all_installed {
        let version = apt::installed_version("rustc-web").unwrap_or_default();
        bail!(
            "no usable eBPF toolchain: rustc-web {version} is installed but {DEBIAN_RUSTC} is \
             older than {}.{} or lacks library sources, and rustup nightly has no rust-src. \
             Run `apt-get update && apt-get install rustc-web rust-web-src` (the security \
             suite has 1.96) or `rustup component add rust-src --toolchain nightly`",
            MIN_DEBIAN_RUSTC.0,
            MIN_DEBIAN_RUSTC.1
        );
    }
    eprintln!(
        "xtask: no eBPF toolchain found (Debian rustc-web with sources, or nightly with rust-src)"
    );
    apt::install(
        &packages,
        "Rust for the BPF target, its core sources, LLVM, bpftool",
    )
}

/// `(release, LLVM major)` from `<rustc> -vV`.
fn rustc_version(mut rustc: Command) -> Option<(String, u32)> {
    let out = rustc.arg("-vV").output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_version_verbose(&String::from_utf8_lossy(&out.stdout))
}

fn parse_version_verbose(text: &str) -> Option<(String, u32)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    let release = field("release:")?;
    let llvm_major = field("LLVM version:")?.split('.').next()?.parse().ok()?;
    Some((release, llvm_major))
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether `<rustc> --print sysroot` has `lib/rustlib/src/rust/library`.
fn has_library_sources(mut rustc: Command) -> bool {
    let Ok(out) = rustc.args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    out.status.success()
        && Path::new(&sysroot)
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rustc_verbose_version() {
        let text = "rustc 1.96.0 (ac68faa20 2026-05-25)\nbinary: rustc\nrelease: 1.96.0\n\
                    LLVM version: 22.1.8\n";
        assert_eq!(parse_version_verbose(text), Some(("1.96.0".to_owned(), 22)));
        assert_eq!(parse_release("1.85.0"), Some((1, 85)));
        assert_eq!(parse_release("1.98.0-nightly"), Some((1, 98)));
        assert!(parse_release("1.85.0").unwrap() < MIN_DEBIAN_RUSTC);
    }
}
