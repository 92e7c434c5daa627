//! `cargo xtask bench --only packet --profile`: the per-packet benchmark
//! under `perf record`, and where the time went: the kernel functions that
//! took the most samples, and the program's hottest instructions, found by
//! mapping the sampled offsets onto its JIT image (which `xdp-bench` writes
//! out; Debian's bpftool has no disassembler to show it).
//!
//! A sample's address is where the CPU was interrupted, which is usually
//! just after the instruction that held it up: after a call returns, or
//! after a load that missed the cache.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{apt, cmd};

/// Sampling rate of `perf record` (per CPU, per second).
const SAMPLE_HZ: &str = "20000";
/// Kernel functions listed.
const TOP_SYMBOLS: usize = 15;
/// Program instructions listed.
const TOP_INSTRUCTIONS: usize = 12;
/// Disassembled lines shown before a hot instruction.
const CONTEXT_BEFORE: usize = 3;

/// What the samples say: per symbol, and per offset inside the program.
#[derive(Debug, Default, PartialEq)]
pub struct Samples {
    /// Non-idle samples in all.
    pub busy: u64,
    pub by_symbol: BTreeMap<String, u64>,
    /// Offsets inside `program` -> samples.
    pub in_program: BTreeMap<u64, u64>,
}

/// Whether `symbol` is the CPU idling (left out of the shares).
fn is_idle(symbol: &str) -> bool {
    symbol.contains("idle") || symbol.contains("safe_halt")
}

/// Reads `perf script -F ip,sym,symoff` output (one sample per line:
/// address, then `symbol+0xoffset`); `program` is the program's symbol.
pub fn parse_perf_script(output: &str, program: &str) -> Samples {
    let mut samples = Samples::default();
    for line in output.lines() {
        let Some(located) = line.split_whitespace().nth(1) else {
            continue;
        };
        let (symbol, offset) = match located.rsplit_once("+0x") {
            Some((symbol, offset)) => (symbol, u64::from_str_radix(offset, 16).ok()),
            None => (located, None),
        };
        if is_idle(symbol) {
            continue;
        }
        samples.busy += 1;
        *samples.by_symbol.entry(symbol.to_owned()).or_default() += 1;
        if let (true, Some(offset)) = (symbol == program, offset) {
            *samples.in_program.entry(offset).or_default() += 1;
        }
    }
    samples
}

/// Reads `objdump -D -b binary` output into (offset, instruction) lines.
pub fn parse_objdump(output: &str) -> Vec<(u64, String)> {
    output
        .lines()
        .filter_map(|line| {
            let (address, rest) = line.trim_start().split_once(":\t")?;
            let offset = u64::from_str_radix(address, 16).ok()?;
            // Bytes, then the instruction; a continuation line has bytes only.
            let instruction = rest.split_once('\t')?.1.trim();
            Some((offset, instruction.to_owned()))
        })
        .collect()
}

fn share(part: u64, whole: u64) -> f64 {
    part as f64 * 100.0 / whole.max(1) as f64
}

/// The report: the top kernel functions, then the program's hottest
/// instructions with the lines before them.
pub fn report(samples: &Samples, program: &str, listing: &[(u64, String)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  Busy samples: {} (idle left out); by function (the verifier's come from loading the harnesses' programs):",
        samples.busy
    );
    let mut symbols: Vec<(&String, &u64)> = samples.by_symbol.iter().collect();
    symbols.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (symbol, count) in symbols.into_iter().take(TOP_SYMBOLS) {
        let _ = writeln!(out, "    {:5.1}%  {symbol}", share(*count, samples.busy));
    }
    let in_program: u64 = samples.in_program.values().sum();
    let _ = writeln!(
        out,
        "\n  Hottest instructions of {program} (share of its {in_program} samples; a sample lands just after the instruction that held the CPU):"
    );
    let mut hot: Vec<(&u64, &u64)> = samples.in_program.iter().collect();
    hot.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (offset, count) in hot.into_iter().take(TOP_INSTRUCTIONS) {
        let _ = writeln!(out, "    {:5.1}%  +{offset:#x}", share(*count, in_program));
        let Some(at) = listing.iter().position(|(o, _)| o == offset) else {
            let _ = writeln!(
                out,
                "            (not an instruction boundary of the image)"
            );
            continue;
        };
        for (o, text) in &listing[at.saturating_sub(CONTEXT_BEFORE)..=at] {
            let mark = if o == offset { ">" } else { " " };
            let _ = writeln!(out, "          {mark} {o:6x}:  {text}");
        }
    }
    out
}

/// objdump's name for this machine's instruction set.
fn objdump_arch() -> Result<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Ok("i386:x86-64"),
        "aarch64" => Ok("aarch64"),
        other => bail!("--profile does not know objdump's name for {other}"),
    }
}

/// Runs `bench` (the `xdp-bench` binary, its environment set) under
/// `perf record` and prints the report.
pub fn packet(mut bench: Command) -> Result<()> {
    apt::ensure_programs(
        &[("perf", "linux-perf"), ("objdump", "binutils")],
        "for --profile",
    )?;
    let arch = objdump_arch()?;
    let dir = std::env::temp_dir().join(format!("lb-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = profile_in(&dir, &mut bench, arch);
    let _ = std::fs::remove_dir_all(&dir);
    print!("{}", result?);
    Ok(())
}

fn profile_in(dir: &Path, bench: &mut Command, arch: &str) -> Result<String> {
    let data = dir.join("perf.data");
    let image = dir.join("lb.jit");
    let mut record = Command::new("perf");
    record
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            SAMPLE_HZ,
            "-a",
            "-o",
        ])
        .arg(&data)
        .arg("--")
        .arg(bench.get_program())
        .args(bench.get_args())
        .env("XDP_BENCH_JIT", &image);
    for (key, value) in bench.get_envs() {
        match value {
            Some(value) => record.env(key, value),
            None => record.env_remove(key),
        };
    }
    cmd::run(&mut record)?;
    let program = std::fs::read_to_string(image.with_extension("symbol"))
        .context("xdp-bench wrote no JIT image symbol")?;
    let script = cmd::stdout_of(
        Command::new("perf")
            .args(["script", "-F", "ip,sym,symoff", "-i"])
            .arg(&data),
    )?;
    let disassembly = cmd::stdout_of(
        Command::new("objdump")
            .args(["-D", "-b", "binary", "-m", arch])
            .arg(&image),
    )?;
    let samples = parse_perf_script(&script, &program);
    if samples.in_program.is_empty() {
        bail!("perf took no sample inside {program}");
    }
    Ok(report(&samples, &program, &parse_objdump(&disassembly)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROGRAM: &str = "bpf_prog_399ab981dc908297_lb";

    #[test]
    fn samples_are_counted_by_function_and_program_offset() {
        let script = "\
 ffffffffc0027477 bpf_prog_399ab981dc908297_lb+0x7bd
 ffffffffc0027477 bpf_prog_399ab981dc908297_lb+0x7bd
 ffffffffc0027010 bpf_prog_399ab981dc908297_lb+0x41
 ffffffff8224379b pv_native_safe_halt+0xb
 ffffffff81600000 htab_map_hash+0x20
 ffffffff81600000 [unknown]

";
        let samples = parse_perf_script(script, PROGRAM);
        assert_eq!(samples.busy, 5, "idle left out, unknown kept");
        assert_eq!(samples.by_symbol[PROGRAM], 3);
        assert_eq!(samples.by_symbol["htab_map_hash"], 1);
        assert_eq!(samples.by_symbol["[unknown]"], 1);
        assert_eq!(
            samples.in_program.into_iter().collect::<Vec<_>>(),
            [(0x41, 1), (0x7bd, 2)]
        );
    }

    #[test]
    fn objdump_lines_become_offsets_and_instructions() {
        let listing = parse_objdump(
            "
/tmp/lb.jit:     file format binary

Disassembly of section .data:

0000000000000000 <.data>:
       0:\t0f 1f 44 00 00       \tnopl   0x0(%rax,%rax,1)
     7b5:\te8 fa c4 50 c1       \tcall   0xffffffffc150ccb4
     7ba:\t48 85 c0             \ttest   %rax,%rax
      2d:\t48 bf 00 f6 0c 78 81 \tmovabs $0xffff8881780cf600,%rdi
      34:\t88 ff ff 
",
        );
        assert_eq!(
            listing,
            [
                (0, "nopl   0x0(%rax,%rax,1)".to_owned()),
                (0x7b5, "call   0xffffffffc150ccb4".to_owned()),
                (0x7ba, "test   %rax,%rax".to_owned()),
                (0x2d, "movabs $0xffff8881780cf600,%rdi".to_owned()),
            ]
        );
    }

    #[test]
    fn the_report_shows_shares_and_the_lines_before_a_hot_spot() {
        let samples = parse_perf_script(
            " 1 bpf_prog_399ab981dc908297_lb+0x7ba\n 1 bpf_prog_399ab981dc908297_lb+0x7ba\n 1 bpf_prog_399ab981dc908297_lb+0x3\n 1 memcmp+0x4\n",
            PROGRAM,
        );
        let listing = vec![
            (0x7a0, "mov    %rax,%rdi".to_owned()),
            (0x7b5, "call   0xffffffffc150ccb4".to_owned()),
            (0x7ba, "test   %rax,%rax".to_owned()),
            (0x7bd, "je     0x7c3".to_owned()),
        ];
        let text = report(&samples, PROGRAM, &listing);
        assert!(
            text.contains(" 75.0%  bpf_prog_399ab981dc908297_lb"),
            "{text}"
        );
        assert!(text.contains(" 25.0%  memcmp"), "{text}");
        assert!(text.contains(" 66.7%  +0x7ba"), "{text}");
        assert!(text.contains(">    7ba:  test   %rax,%rax"), "{text}");
        assert!(text.contains("     7b5:  call"), "{text}");
        assert!(
            !text.contains("7bd:"),
            "nothing after the hot spot:\n{text}"
        );
        assert!(
            text.contains("+0x3\n            (not an instruction boundary"),
            "{text}"
        );
    }
}
