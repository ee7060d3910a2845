//! Static analysis of the kernels' machine code (SASS): what one iteration of each kernel's main loop
//! issues, by instruction class, and how many blocks fit on an SM.
//!
//! There is no GPU to time the kernels on, but the SASS in the fatbin is what the GPU runs, and its
//! instruction mix per loop iteration says most of what a profiler would: how many instructions ride along
//! with each tensor-core `HMMA`, how many are address arithmetic, whether a division slow path was left
//! in. `tests/sass.rs` holds every kernel to a budget on these numbers (the table is
//! [`budgets`]); `gsdpa sass` prints them. docs/sass.md explains how to read them.
//!
//! The pipeline: [`dump_sass`] runs `cuobjdump --dump-sass` on a fatbin, [`parse`] splits its listing
//! into one [`Function`] per kernel and arch, [`analyze`] classifies each instruction ([`Class`]), finds
//! the main loop ([`main_loop`]), the slow-path calls ([`subroutine_calls`]) and the occupancy
//! ([`occupancy`]).

pub mod budgets;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::backend::{BackwardOptions, BackwardTiles};
use crate::build_info;
use crate::launch;
use crate::problem::{AttentionProblem, DType};

/// Why the SASS could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum SassError {
    /// No `cuobjdump` in `$GSDPA_CUOBJDUMP`, `$CUDA_HOME/bin` or on `PATH`.
    #[error(
        "cuobjdump not found (set GSDPA_CUOBJDUMP or CUDA_HOME; scripts/nvcc-env.sh installs it)"
    )]
    NoCuobjdump,
    /// The crate was built without nvcc, so there is no fatbin to disassemble.
    #[error("this build has no CUDA fatbin: {0}")]
    NoFatbin(String),
    /// Writing the temporary fatbin or starting cuobjdump failed.
    #[error("{0}")]
    Io(String),
    /// cuobjdump ran and failed.
    #[error("cuobjdump failed: {0}")]
    Cuobjdump(String),
}

// ---------------------------------------------------------------------------------------------------
// Disassembly
// ---------------------------------------------------------------------------------------------------

/// The `cuobjdump` to use: `$GSDPA_CUOBJDUMP`, else `$CUDA_HOME/bin/cuobjdump` (where the pinned
/// `nvidia-cuda-cuobjdump` wheel puts it, next to nvcc), else the first one on `PATH`.
pub fn cuobjdump_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GSDPA_CUOBJDUMP") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        let path = Path::new(&home).join("bin").join("cuobjdump");
        if path.is_file() {
            return Some(path);
        }
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("cuobjdump"))
        .find(|p| p.is_file())
}

/// `cuobjdump --dump-sass` of the fatbin (or cubin) at `path`.
pub fn dump_sass_file(path: &Path) -> Result<String, SassError> {
    let tool = cuobjdump_path().ok_or(SassError::NoCuobjdump)?;
    let out = Command::new(&tool)
        .arg("--dump-sass")
        .arg(path)
        .output()
        .map_err(|e| SassError::Io(format!("running {}: {e}", tool.display())))?;
    if !out.status.success() {
        return Err(SassError::Cuobjdump(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    String::from_utf8(out.stdout)
        .map_err(|_| SassError::Cuobjdump("output is not UTF-8".to_string()))
}

/// `cuobjdump --dump-sass` of fatbin bytes (written to a temporary file for the tool).
pub fn dump_sass(fatbin: &[u8]) -> Result<String, SassError> {
    let path = std::env::temp_dir().join(format!("gsdpa-sass-{}.fatbin", std::process::id()));
    std::fs::write(&path, fatbin)
        .map_err(|e| SassError::Io(format!("writing {}: {e}", path.display())))?;
    let result = dump_sass_file(&path);
    let _ = std::fs::remove_file(&path);
    result
}

/// The SASS of the crate's own embedded fatbin ([`build_info::fatbin`]).
pub fn dump_embedded() -> Result<String, SassError> {
    let fatbin = build_info::fatbin().ok_or_else(|| {
        SassError::NoFatbin(
            build_info::kernels_not_built_reason()
                .unwrap_or("no nvcc")
                .to_string(),
        )
    })?;
    dump_sass(fatbin)
}

// ---------------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------------

/// One SASS instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Byte offset in the function (16 bytes per instruction on sm_80+).
    pub address: u32,
    /// The guard predicate (`@P0`, `@!PT`), if any.
    pub predicate: Option<String>,
    /// The opcode with its modifiers, e.g. `LDG.E.128` or `HMMA.16816.F32.BF16`.
    pub opcode: String,
    /// The operands as printed.
    pub operands: String,
}

impl Instruction {
    /// The opcode without modifiers (`LDG` for `LDG.E.128`).
    pub fn mnemonic(&self) -> &str {
        self.opcode.split('.').next().unwrap_or("")
    }

    /// Whether the instruction always executes (and a branch is always taken): no guard predicate (or
    /// `@PT`), and, for a `BRA`, no predicate operand. sm_100's uniform branches carry their condition
    /// as the first operand instead of a guard (`BRA.U !UP0, 0x3f50`); `PT` there is always true.
    pub fn always_executes(&self) -> bool {
        let guarded = !matches!(self.predicate.as_deref(), None | Some("@PT"));
        let predicate_operand = self.mnemonic() == "BRA"
            && self.operands.split_once(',').is_some_and(|(first, _)| {
                let first = first.trim();
                let p = first.strip_prefix('!').unwrap_or(first);
                let p = p.strip_prefix('U').unwrap_or(p);
                first != "PT" && p.len() == 2 && p.starts_with('P')
            });
        !guarded && !predicate_operand
    }

    /// The target of a `BRA` or `CALL` with an immediate target (`BRA 0x1a00`), if any.
    pub fn target(&self) -> Option<u32> {
        if !matches!(self.mnemonic(), "BRA" | "CALL") {
            return None;
        }
        let hex = self
            .operands
            .split_whitespace()
            .last()?
            .strip_prefix("0x")?;
        u32::from_str_radix(hex, 16).ok()
    }
}

/// One kernel's SASS for one arch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// The kernel's entry-point name.
    pub name: String,
    /// The SASS arch, e.g. `sm_80` or `sm_90a`.
    pub arch: String,
    /// The instructions in address order.
    pub instructions: Vec<Instruction>,
}

/// Splits a `cuobjdump --dump-sass` listing into functions. The listing names the arch once per ELF
/// (`code for sm_80`) and each function (`Function : name`); instruction lines look like
/// `/*0120*/  @!P1 EXIT ;  /* 0x... */`, with the encoding's second half on a line of its own.
pub fn parse(listing: &str) -> Vec<Function> {
    let mut functions: Vec<Function> = Vec::new();
    let mut arch = String::new();
    for line in listing.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("code for ") {
            arch = rest.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("Function : ") {
            functions.push(Function {
                name: rest.trim().to_string(),
                arch: arch.clone(),
                instructions: Vec::new(),
            });
        } else if let (Some(function), Some(instruction)) =
            (functions.last_mut(), parse_instruction(line))
        {
            function.instructions.push(instruction);
        }
    }
    functions
}

fn parse_instruction(line: &str) -> Option<Instruction> {
    let rest = line.strip_prefix("/*")?;
    let (address, rest) = rest.split_once("*/")?;
    let address = u32::from_str_radix(address.trim(), 16).ok()?;
    let text = rest.split_once(';')?.0.trim();
    let mut words = text.splitn(2, char::is_whitespace);
    let mut first = words.next()?;
    let mut tail = words.next().unwrap_or("").trim();
    let predicate = if first.starts_with('@') {
        let p = first.to_string();
        let mut words = tail.splitn(2, char::is_whitespace);
        first = words.next()?;
        tail = words.next().unwrap_or("").trim();
        Some(p)
    } else {
        None
    };
    Some(Instruction {
        address,
        predicate,
        opcode: first.to_string(),
        operands: tail.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------------
// Instruction classes
// ---------------------------------------------------------------------------------------------------

/// What an instruction is for. The table, by mnemonic (modifiers ignored; `U` prefixed uniform-datapath
/// forms count with their vector twins because they take an issue slot all the same):
///
/// | class       | mnemonics |
/// |-------------|-----------|
/// | `Hmma`      | HMMA (the tensor-core mma.sync) |
/// | `Hgmma`     | HGMMA (Hopper's warpgroup wgmma) |
/// | `Tma`       | UTMALDG UTMASTG UTMAREDG UTMAPF (Hopper's tensor-memory-accelerator copies) |
/// | `Ldsm`      | LDSM (ldmatrix) |
/// | `Ldgsts`    | LDGSTS (cp.async) |
/// | `Ldg`/`Stg` | LDG / STG (global loads / stores; widths counted apart, see [`Counts`]) |
/// | `Atom`      | RED, ATOM, ATOMG (global atomics) |
/// | `Lds`/`Sts` | LDS / STS (shared memory without ldmatrix) |
/// | `Local`     | LDL / STL (spills; ptxas's report should already have caught them) |
/// | `Mufu`      | MUFU (ex2, rcp, ...: the special-function unit) |
/// | `Float`     | FADD FMUL FFMA FMNMX FSETP FSEL FSET FCHK FSWZADD, and the packed 16-bit HADD2 HMUL2 HFMA2 HMNMX2 HSETP2 |
/// | `Convert`   | F2F F2FP F2I I2F FRND (conversions, bf16/f16 packing) |
/// | `IntPred`   | IADD3 IMAD IMUL LOP3 LOP SHF SHL SHR LEA ISETP ICMP PLOP3 SEL IABS IMNMX POPC FLO BREV BMSK SGXT PRMT P2R R2P VIADD VIMNMX (integer and predicate arithmetic: addresses, loop counters, masks) |
/// | `Move`      | MOV MOV32I S2R S2UR CS2R R2UR LDC ULDC (register moves and special/constant reads) |
/// | `Shfl`      | SHFL |
/// | `Sync`      | BAR DEPBAR LDGDEPBAR MEMBAR WARPSYNC ERRBAR CCTL (barriers and async-copy waits) |
/// | `Branch`    | BRA BRX JMP JMX CALL RET EXIT BSSY BSYNC BREAK BPT YIELD KILL (control flow) |
/// | `Other`     | everything else (NOP, VOTE, ...) |
///
/// `IMAD.MOV` (a move the compiler issues on the integer multiplier) stays `IntPred`: it occupies that
/// pipe. Plain `MOV` is its own class and not in the integer+predicate budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Hmma,
    Hgmma,
    Tma,
    Ldsm,
    Ldgsts,
    Ldg,
    Stg,
    Atom,
    Lds,
    Sts,
    Local,
    Mufu,
    Float,
    Convert,
    IntPred,
    Move,
    Shfl,
    Sync,
    Branch,
    Other,
}

impl Class {
    /// Every class, in report order.
    pub const ALL: [Class; 20] = [
        Class::Hmma,
        Class::Hgmma,
        Class::Tma,
        Class::Ldsm,
        Class::Ldgsts,
        Class::Ldg,
        Class::Stg,
        Class::Atom,
        Class::Lds,
        Class::Sts,
        Class::Local,
        Class::Mufu,
        Class::Float,
        Class::Convert,
        Class::IntPred,
        Class::Move,
        Class::Shfl,
        Class::Sync,
        Class::Branch,
        Class::Other,
    ];

    /// The class of a mnemonic (an opcode without modifiers).
    pub fn of(mnemonic: &str) -> Class {
        // Uniform-datapath forms (UIADD3, UMOV, ULDC, ...) count with their vector twins; UTMA* etc.
        // have no twin and fall through to Other.
        let base = match mnemonic.strip_prefix('U') {
            Some(rest) if !rest.is_empty() && Class::of_vector(rest) != Class::Other => rest,
            _ => mnemonic,
        };
        Class::of_vector(base)
    }

    fn of_vector(m: &str) -> Class {
        match m {
            "HMMA" => Class::Hmma,
            "HGMMA" => Class::Hgmma,
            "UTMALDG" | "UTMASTG" | "UTMAREDG" | "UTMAPF" => Class::Tma,
            "LDSM" => Class::Ldsm,
            "LDGSTS" => Class::Ldgsts,
            "LDG" => Class::Ldg,
            "STG" => Class::Stg,
            "RED" | "ATOM" | "ATOMG" => Class::Atom,
            "LDS" => Class::Lds,
            "STS" => Class::Sts,
            "LDL" | "STL" => Class::Local,
            "MUFU" => Class::Mufu,
            "FADD" | "FMUL" | "FFMA" | "FMNMX" | "FSETP" | "FSEL" | "FSET" | "FCHK" | "FSWZADD"
            | "HADD2" | "HMUL2" | "HFMA2" | "HMNMX2" | "HSETP2" => Class::Float,
            "F2F" | "F2FP" | "F2I" | "I2F" | "FRND" => Class::Convert,
            "IADD3" | "IMAD" | "IMUL" | "LOP3" | "LOP" | "SHF" | "SHL" | "SHR" | "LEA"
            | "ISETP" | "ICMP" | "PLOP3" | "SEL" | "IABS" | "IMNMX" | "POPC" | "FLO" | "BREV"
            | "BMSK" | "SGXT" | "PRMT" | "P2R" | "R2P" | "VIADD" | "VIMNMX" => Class::IntPred,
            "MOV" | "MOV32I" | "S2R" | "S2UR" | "CS2R" | "R2UR" | "LDC" | "LDCU" => Class::Move,
            "SHFL" => Class::Shfl,
            "BAR" | "DEPBAR" | "LDGDEPBAR" | "MEMBAR" | "WARPSYNC" | "ERRBAR" | "CCTL" => {
                Class::Sync
            }
            "BRA" | "BRX" | "JMP" | "JMX" | "CALL" | "RET" | "EXIT" | "BSSY" | "BSYNC"
            | "BREAK" | "BPT" | "YIELD" | "KILL" => Class::Branch,
            _ => Class::Other,
        }
    }

    /// A short lower-case name for reports (`hmma`, `int_pred`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Class::Hmma => "hmma",
            Class::Hgmma => "hgmma",
            Class::Tma => "tma",
            Class::Ldsm => "ldsm",
            Class::Ldgsts => "ldgsts",
            Class::Ldg => "ldg",
            Class::Stg => "stg",
            Class::Atom => "atom",
            Class::Lds => "lds",
            Class::Sts => "sts",
            Class::Local => "local",
            Class::Mufu => "mufu",
            Class::Float => "float",
            Class::Convert => "convert",
            Class::IntPred => "int_pred",
            Class::Move => "move",
            Class::Shfl => "shfl",
            Class::Sync => "sync",
            Class::Branch => "branch",
            Class::Other => "other",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Instruction counts of a stretch of code, by class, plus the details the budgets look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Count per class.
    pub by_class: BTreeMap<Class, u32>,
    /// LDG / STG that move 16 bytes per thread (`.128`); the rest of `Ldg` / `Stg` are narrower.
    pub ldg_128: u32,
    pub stg_128: u32,
    /// LDG that move 8 bytes per thread (`.64`): with [`Self::ldg_128`], what is left of `Ldg` moves
    /// 4 bytes or less (scalars: block-table entries, lengths, LSEs).
    pub ldg_64: u32,
    /// LDGSTS (`cp.async`) that copy 16 bytes per thread (`.128`).
    pub ldgsts_128: u32,
    /// MUFU by function (`EX2`, `RCP`, ...).
    pub mufu: BTreeMap<String, u32>,
    /// CALL instructions of any kind (see [`subroutine_calls`] for the ones that matter).
    pub calls: u32,
}

impl Counts {
    /// Counts `instructions`.
    pub fn of(instructions: &[Instruction]) -> Counts {
        let mut counts = Counts::default();
        for ins in instructions {
            let class = Class::of(ins.mnemonic());
            *counts.by_class.entry(class).or_default() += 1;
            let wide = ins.opcode.split('.').any(|m| m == "128");
            let eight_bytes = ins.opcode.split('.').any(|m| m == "64");
            match class {
                Class::Ldg if wide => counts.ldg_128 += 1,
                Class::Ldg if eight_bytes => counts.ldg_64 += 1,
                Class::Stg if wide => counts.stg_128 += 1,
                Class::Ldgsts if wide => counts.ldgsts_128 += 1,
                Class::Mufu => {
                    let function = ins.opcode.split('.').nth(1).unwrap_or("?");
                    *counts.mufu.entry(function.to_string()).or_default() += 1;
                }
                _ => {}
            }
            if ins.mnemonic() == "CALL" {
                counts.calls += 1;
            }
        }
        counts
    }

    /// The count of one class.
    pub fn get(&self, class: Class) -> u32 {
        self.by_class.get(&class).copied().unwrap_or(0)
    }

    /// LDG that move 4 bytes or less per thread.
    pub fn ldg_narrow(&self) -> u32 {
        self.get(Class::Ldg) - self.ldg_128 - self.ldg_64
    }

    /// All instructions.
    pub fn total(&self) -> u32 {
        self.by_class.values().sum()
    }

    /// Instructions that are not HMMA, per HMMA (`None` without HMMA).
    pub fn non_hmma_per_hmma(&self) -> Option<f64> {
        let hmma = self.get(Class::Hmma);
        (hmma > 0).then(|| f64::from(self.total() - hmma) / f64::from(hmma))
    }

    /// LDSM per HMMA (`None` without HMMA).
    pub fn ldsm_per_hmma(&self) -> Option<f64> {
        let hmma = self.get(Class::Hmma);
        (hmma > 0).then(|| f64::from(self.get(Class::Ldsm)) / f64::from(hmma))
    }
}

// ---------------------------------------------------------------------------------------------------
// Control flow
// ---------------------------------------------------------------------------------------------------

/// A loop: a backward branch and the instructions from its target to the branch itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loop {
    /// Address of the loop's first instruction (the branch target).
    pub start: u32,
    /// Address of the backward branch that closes the loop.
    pub end: u32,
    /// What the body issues, once per iteration, counting every instruction between `start` and `end`
    /// once (both sides of a branch inside the body: conditionally skipped code such as the causal
    /// mask of a diagonal tile is included, so this bounds one iteration's path from above).
    pub counts: Counts,
    /// What the steady-state path through the body issues ([`steady_path`]): it prefetches the next
    /// tile and skips what only some tiles run (the causal mask, the last tile's gate prefetch). The
    /// budgets are on this path.
    pub steady: Counts,
    /// What the path that loads a full tile issues ([`loaded_path`]): the most LDGSTS, then the most
    /// LDG, then the fewest instructions. In the paged decode, where a key past the length is zero-filled
    /// without its block-table read, this is a tile of in-range keys on a warp that only copies.
    pub loaded: Counts,
    /// [`loaded_path`] that also does the most HMMA: in the decode, the warp that does the math.
    pub loaded_math: Counts,
}

/// Every loop of `f`: each `BRA` to an address at or before its own closes one (a loop exit written as
/// `CALL.REL.NOINC` to the loop's end is not a loop). Except a branch from cold code placed after the
/// function's last unconditional `EXIT` back to before it: nvcc moves the retry of an mbarrier wait
/// (`SYNCS.PHASECHK` in a spin loop) out of line there, and its branch back to the wait's site spans
/// half the kernel without being a loop of it.
pub fn loops(f: &Function) -> Vec<Loop> {
    let last_exit = f
        .instructions
        .iter()
        .rev()
        .find(|i| i.mnemonic() == "EXIT" && i.predicate.is_none())
        .map(|i| i.address);
    let out_of_line = |ins: &Instruction, start: u32| {
        last_exit.is_some_and(|exit| ins.address > exit && start < exit)
    };
    f.instructions
        .iter()
        .filter(|ins| ins.mnemonic() == "BRA")
        .filter_map(|ins| {
            let start = ins.target()?;
            (start <= ins.address && !out_of_line(ins, start)).then(|| {
                let body = body(f, start, ins.address);
                Loop {
                    start,
                    end: ins.address,
                    counts: Counts::of(body),
                    steady: Counts::of(&steady_path(body)),
                    loaded: Counts::of(&loaded_path(body, false)),
                    loaded_math: Counts::of(&loaded_path(body, true)),
                }
            })
        })
        .collect()
}

fn body(f: &Function, start: u32, end: u32) -> &[Instruction] {
    let first = f.instructions.partition_point(|i| i.address < start);
    let last = f.instructions.partition_point(|i| i.address <= end);
    &f.instructions[first..last]
}

/// The steady-state path through a loop body (its first instruction to its last, the backward branch):
/// of all paths, one that issues the most LDGSTS and, of those, the fewest instructions. Every iteration
/// but the last prefetches the next tile with cp.async, and only some tiles run the causal mask, so this
/// is the iteration a long sequence runs most. A predicated `BRA` forward inside the body (a guard, or
/// a uniform branch's predicate operand) may go either way, an unpredicated one only to its target; a branch out of the body ends no iteration and is not
/// followed; everything else (a predicated loop-exit `CALL.REL.NOINC`, a subroutine `CALL`, which
/// returns) falls through. Branch targets are after the branch, so one pass in address order finds it.
pub fn steady_path(body: &[Instruction]) -> Vec<Instruction> {
    best_path(body, |ins| {
        [-i64::from(ins.mnemonic() == "LDGSTS"), 1, 0, 0]
    })
}

/// The path through a loop body (as [`steady_path`]) that issues the most LDGSTS, then the most LDG,
/// then (with `math`) the most HMMA, then the fewest instructions: an iteration that loads a whole tile,
/// block-table reads included, where [`steady_path`] may take a cheaper zero-fill side.
pub fn loaded_path(body: &[Instruction], math: bool) -> Vec<Instruction> {
    best_path(body, |ins| {
        let is = |m: &str| i64::from(ins.mnemonic() == m);
        [
            -is("LDGSTS"),
            -is("LDG"),
            if math { -is("HMMA") } else { 0 },
            1,
        ]
    })
}

/// The path from a body's first instruction to its last that minimises the sum of `weight` over its
/// instructions, compared lexicographically (a sum order, so one pass in address order is exact).
fn best_path(body: &[Instruction], weight: impl Fn(&Instruction) -> [i64; 4]) -> Vec<Instruction> {
    let n = body.len();
    if n == 0 {
        return Vec::new();
    }
    let index_of = |address: u32| body.binary_search_by_key(&address, |i| i.address).ok();
    // cost[i]: the best summed weight from the body's start up to and including i; from[i]: the
    // predecessor on that path.
    let weight = |i: usize| weight(&body[i]);
    let mut cost: Vec<Option<[i64; 4]>> = vec![None; n];
    let mut from = vec![usize::MAX; n];
    cost[0] = Some(weight(0));
    for i in 0..n - 1 {
        let Some(so_far) = cost[i] else {
            continue;
        };
        let ins = &body[i];
        let mut relax = |j: usize| {
            let w = weight(j);
            let candidate = std::array::from_fn(|k| so_far[k] + w[k]);
            if cost[j].is_none_or(|c| candidate < c) {
                cost[j] = Some(candidate);
                from[j] = i;
            }
        };
        let always_taken = ins.always_executes();
        match ins.mnemonic() {
            "BRA" => {
                if let Some(j) = ins.target().and_then(index_of).filter(|&j| j > i) {
                    relax(j);
                }
                if !always_taken {
                    relax(i + 1);
                }
            }
            "EXIT" | "RET" | "BRX" | "JMX" if always_taken => {}
            _ => relax(i + 1),
        }
    }
    if cost[n - 1].is_none() {
        return body.to_vec();
    }
    let mut path = vec![n - 1];
    while let Some(&last) = path.last() {
        if last == 0 {
            break;
        }
        path.push(from[last]);
    }
    path.iter().rev().map(|&i| body[i].clone()).collect()
}

/// The kernel's main loop. The rule: among the loops whose body contains HMMA (or HGMMA, Hopper's
/// wgmma), take the innermost ones (no other such loop nested inside), and of those the one with the
/// most of them (the first on a tie). In the forward that is the loop over key tiles (the Hopper
/// forward: its consumers' loop); in the backward the loop over query tiles (dK/dV) or key tiles (dQ)
/// inside the loop over heads. Head-dim loops are unrolled, so they add no branch. `None` for a kernel
/// without a loop that issues HMMA or HGMMA.
pub fn main_loop(f: &Function) -> Option<Loop> {
    let tensor = |c: &Counts| c.get(Class::Hmma) + c.get(Class::Hgmma);
    let with_hmma: Vec<Loop> = loops(f)
        .into_iter()
        .filter(|l| tensor(&l.counts) > 0)
        .collect();
    let innermost = |l: &&Loop| {
        !with_hmma.iter().any(|inner| {
            (inner.start, inner.end) != (l.start, l.end)
                && inner.start >= l.start
                && inner.end <= l.end
        })
    };
    with_hmma
        .iter()
        .filter(innermost)
        .fold(None::<&Loop>, |best, l| match best {
            Some(b) if tensor(&b.counts) >= tensor(&l.counts) => Some(b),
            _ => Some(l),
        })
        .cloned()
}

/// The loop that issues the most TMA copies (`UTMALDG` and friends; the first on a tie): in the
/// warp-specialized Hopper forward, the producer's loop over key tiles, apart from the consumers' main
/// loop. `None` for a kernel without a loop that issues TMA copies.
pub fn tma_loop(f: &Function) -> Option<Loop> {
    loops(f)
        .into_iter()
        .filter(|l| l.counts.get(Class::Tma) > 0)
        .fold(None::<Loop>, |best, l| match best {
            Some(b) if b.counts.get(Class::Tma) >= l.counts.get(Class::Tma) => Some(b),
            _ => Some(l),
        })
}

/// What a called subroutine does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubroutineKind {
    /// A shuffle nvcc could not prove convergent, issued from a subroutine: `WARPSYNC`, `SHFL`, `RET`
    /// and register moves, nothing else. Cheap and not a slow path.
    Shuffle,
    /// Anything else: a slow path such as an IEEE division's out-of-range case (reciprocal refinement,
    /// scaling, special cases), dozens of instructions behind a range check and a branch.
    SlowPath,
}

/// A CALL that enters a subroutine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubroutineCall {
    /// Address of the CALL.
    pub address: u32,
    /// Address of the subroutine.
    pub target: u32,
    pub kind: SubroutineKind,
}

/// The CALLs of `f` that enter a subroutine: a stretch of code that returns (a `RET` at or after the
/// target, with no `EXIT` between), which nvcc places after the kernel's own code. A
/// `CALL.REL.NOINC` to the instruction after a loop (how sm_80+ code leaves a loop whose exit is
/// divergent) reaches the kernel's `EXIT` first and is not one. Each call is classified by what the
/// subroutine holds ([`SubroutineKind`]).
pub fn subroutine_calls(f: &Function) -> Vec<SubroutineCall> {
    f.instructions
        .iter()
        .filter(|ins| ins.mnemonic() == "CALL")
        .filter_map(|ins| {
            let target = ins.target()?;
            let first = f.instructions.partition_point(|i| i.address < target);
            let rest = &f.instructions[first..];
            let end = rest
                .iter()
                .position(|i| matches!(i.mnemonic(), "RET" | "EXIT"))?;
            if rest[end].mnemonic() != "RET" {
                return None;
            }
            let subroutine = &rest[..=end];
            let is_move = |i: &Instruction| {
                i.opcode.starts_with("IMAD.MOV") || i.opcode.starts_with("HFMA2.MMA")
            };
            let shuffle = subroutine.iter().any(|i| i.mnemonic() == "SHFL")
                && subroutine.iter().all(|i| {
                    is_move(i)
                        || matches!(
                            Class::of(i.mnemonic()),
                            Class::Shfl | Class::Sync | Class::Move | Class::Branch
                        )
                });
            Some(SubroutineCall {
                address: ins.address,
                target,
                kind: if shuffle {
                    SubroutineKind::Shuffle
                } else {
                    SubroutineKind::SlowPath
                },
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Occupancy
// ---------------------------------------------------------------------------------------------------

/// The per-SM resources that bound how many blocks are resident at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmLimits {
    /// The GPU, for reports.
    pub gpu: &'static str,
    /// The SASS arch it runs from this fatbin.
    pub arch: &'static str,
    /// 32-bit registers per SM (split over 4 sub-partitions; a warp's registers live in one).
    pub registers: u32,
    /// Shared memory per SM, in bytes, at the largest carve-out.
    pub shared_bytes: u32,
    /// Shared memory the driver reserves per block (1 KiB on sm_80+).
    pub reserved_shared_per_block: u32,
    pub threads: u32,
    pub blocks: u32,
}

/// A100 (sm_80): 64K registers, 164 KiB shared memory, 2048 threads and 32 blocks per SM.
pub const A100: SmLimits = SmLimits {
    gpu: "A100",
    arch: "sm_80",
    registers: 65536,
    shared_bytes: 164 * 1024,
    reserved_shared_per_block: 1024,
    threads: 2048,
    blocks: 32,
};

/// H100 (sm_90a): 64K registers, 228 KiB shared memory, 2048 threads and 32 blocks per SM.
pub const H100: SmLimits = SmLimits {
    gpu: "H100",
    arch: "sm_90a",
    registers: 65536,
    shared_bytes: 228 * 1024,
    reserved_shared_per_block: 1024,
    threads: 2048,
    blocks: 32,
};

/// The GPU whose limits apply to SASS built for `arch`, if it is one of [`A100`], [`H100`].
pub fn limits_for(arch: &str) -> Option<SmLimits> {
    [A100, H100].into_iter().find(|l| l.arch == arch)
}

/// How a kernel launches: threads per block and shared memory per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchShape {
    pub threads: u32,
    /// Dynamic shared memory per block, in bytes.
    pub dynamic_shared_bytes: u32,
}

/// Blocks per SM and what bounds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    pub gpu: &'static str,
    /// Resident blocks per SM: the least of the four bounds below.
    pub blocks: u32,
    pub by_registers: u32,
    pub by_shared: u32,
    pub by_threads: u32,
    pub by_block_limit: u32,
}

impl Occupancy {
    /// The resource that sets [`Occupancy::blocks`] (`registers`, `shared`, `threads` or `blocks`).
    pub fn limiter(&self) -> &'static str {
        if self.blocks == self.by_registers {
            "registers"
        } else if self.blocks == self.by_shared {
            "shared"
        } else if self.blocks == self.by_threads {
            "threads"
        } else {
            "blocks"
        }
    }
}

/// Resident blocks per SM for a kernel with `registers` per thread and `static_shared` bytes of static
/// shared memory, launched as `shape`, on `limits`:
/// - registers: a warp gets `registers * 32` rounded up to 256; each of the SM's 4 sub-partitions holds
///   `limits.registers / 4` and whole warps, so warps = 4 * floor(registers / 4 / per-warp), and
///   blocks = floor(warps / warps per block);
/// - shared: floor(`limits.shared_bytes` / (static + dynamic + reserved per block, rounded up to 128));
/// - threads: floor(`limits.threads` / threads per block, in whole warps); and the block limit.
pub fn occupancy(
    registers: u32,
    static_shared: u32,
    shape: LaunchShape,
    limits: &SmLimits,
) -> Occupancy {
    let warps_per_block = shape.threads.div_ceil(32).max(1);
    let registers_per_warp = (registers.max(1) * 32).div_ceil(256) * 256;
    let warps_by_registers = 4 * (limits.registers / 4 / registers_per_warp);
    let by_registers = warps_by_registers / warps_per_block;
    let shared_per_block =
        (static_shared + shape.dynamic_shared_bytes + limits.reserved_shared_per_block)
            .div_ceil(128)
            * 128;
    let by_shared = limits.shared_bytes / shared_per_block;
    let by_threads = limits.threads / (warps_per_block * 32);
    let by_block_limit = limits.blocks;
    Occupancy {
        gpu: limits.gpu,
        blocks: by_registers
            .min(by_shared)
            .min(by_threads)
            .min(by_block_limit),
        by_registers,
        by_shared,
        by_threads,
        by_block_limit,
    }
}

/// Whether the crate can launch `kernel` on an arch whose SASS is `arch` (`sm_80`, `sm_90a`): false when
/// its dynamic shared memory is above the arch's opt-in limit ([`TargetArch::max_dynamic_shared_bytes`];
/// the launch check refuses it), as for the large backward tiles where they do not fit, whose entry points
/// compile empty there (kernels/common/platform.h). True for a kernel without a launch shape or an arch
/// that does not parse: nothing says it cannot run.
pub fn launchable(kernel: &str, arch: &str) -> bool {
    static SHAPES: std::sync::OnceLock<BTreeMap<String, LaunchShape>> = std::sync::OnceLock::new();
    let shapes = SHAPES.get_or_init(launch_shapes);
    match (shapes.get(kernel), crate::arch::TargetArch::parse(arch)) {
        (Some(shape), Ok(arch)) => shape.dynamic_shared_bytes <= arch.max_dynamic_shared_bytes(),
        _ => true,
    }
}

/// Threads and dynamic shared memory of every kernel the crate launches, from the launch configurations
/// of `src/launch.rs` (the forward and both backward modes for each dtype and head dim, the gate kernels,
/// the conformance kernel) and `src/paged.rs` (the decode and its combine for each dtype and head dim,
/// the append). Kernels it never launches (the emulator self-tests) are absent.
pub fn launch_shapes() -> BTreeMap<String, LaunchShape> {
    let mut shapes = BTreeMap::new();
    let mut add = |config: launch::LaunchConfig| {
        shapes.insert(
            config.kernel.clone(),
            LaunchShape {
                threads: config.block.iter().product(),
                dynamic_shared_bytes: config.shared_bytes,
            },
        );
    };
    for dtype in [DType::BF16, DType::F16] {
        for head_dim in crate::SUPPORTED_HEAD_DIMS {
            let problem = AttentionProblem::new(1, 128, 128, 1, 1, head_dim);
            if let Ok(config) = launch::forward(&problem, dtype) {
                add(config);
            }
            if let Ok(config) = launch::forward_sm90(&problem, dtype) {
                add(config);
            }
            for deterministic in [false, true] {
                for tiles in [BackwardTiles::Compact, BackwardTiles::Large] {
                    let options = BackwardOptions {
                        deterministic,
                        tiles,
                    };
                    // Without a limit, and at sm_80's (D = 256's large tiles there: `*_large_1stage`).
                    let sm80 = crate::arch::TargetArch::SM80.max_dynamic_shared_bytes();
                    for limit in [u32::MAX, sm80] {
                        for config in
                            launch::backward(&problem, dtype, options, limit).unwrap_or_default()
                        {
                            add(config);
                        }
                    }
                }
            }
        }
        for config in [
            launch::gate(dtype, 128, 1, 128),
            launch::gate_backward(dtype, 128, 1, 128),
        ]
        .into_iter()
        .flatten()
        {
            add(config);
        }
        for head_dim in crate::SUPPORTED_HEAD_DIMS {
            // Two splits: the main kernel and the combine.
            let problem = crate::paged::DecodeProblem::new(1, 1, 8, 1, head_dim, 16, 1, 1);
            for config in crate::paged::decode_launches(&problem, dtype, 2).unwrap_or_default() {
                add(config);
            }
        }
        let problem = crate::paged::DecodeProblem::new(1, 1, 1, 1, 128, 16, 1, 1);
        add(crate::paged::append_kv_launch(&problem, dtype, 1));
    }
    add(launch::conformance());
    shapes
}

// ---------------------------------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------------------------------

/// Kernels that apply the gate: the fused forward (its epilogue), the backward preprocessing, the
/// standalone gate kernels, and the paged decode (its one-split epilogue) with its combine. Every one of
/// them must be free of slow-path subroutine calls beyond `budgets::ALLOWED_SLOW_PATH_CALLS`.
pub fn is_gated(kernel: &str) -> bool {
    [
        "gsdpa_fwd_",
        "gsdpa_fwd90_",
        "gsdpa_bwd_preprocess_",
        "gsdpa_gate_",
        "gsdpa_decode_",
    ]
    .iter()
    .any(|prefix| kernel.starts_with(prefix))
}

/// Everything the analysis says about one kernel on one arch.
#[derive(Debug, Clone)]
pub struct KernelReport {
    pub name: String,
    pub arch: String,
    /// The whole function.
    pub total: Counts,
    /// The main loop ([`main_loop`]); for every kernel here one iteration is one tile of the loop's
    /// sequence per warp (forward: a key tile; backward dK/dV: a query tile; backward dQ: a key tile).
    pub main_loop: Option<Loop>,
    /// The loop that issues the most TMA copies ([`tma_loop`]): a warp-specialized kernel's producer
    /// loop, `None` in kernels without TMA.
    pub tma_loop: Option<Loop>,
    /// The CALLs that enter a subroutine ([`subroutine_calls`]).
    pub subroutine_calls: Vec<SubroutineCall>,
    /// ptxas's registers per thread, when the build recorded them for this kernel and arch.
    pub registers: Option<u32>,
    /// Blocks per SM on the GPU this arch's SASS is for ([`limits_for`]), when the launch shape and
    /// registers are known.
    pub occupancy: Option<Occupancy>,
}

/// Analyzes every function of a `cuobjdump --dump-sass` listing. Registers come from the build's ptxas
/// report ([`build_info::kernels`]) and launch shapes from [`launch_shapes`].
pub fn analyze(listing: &str) -> Vec<KernelReport> {
    let shapes = launch_shapes();
    let mut reports: Vec<KernelReport> = parse(listing)
        .iter()
        .map(|f| {
            let resources = build_info::kernels()
                .iter()
                .find(|k| k.name == f.name && k.arch == f.arch);
            let occupancy = match (resources, shapes.get(&f.name), limits_for(&f.arch)) {
                (Some(r), Some(shape), Some(limits)) => {
                    Some(occupancy(r.registers, r.shared_bytes, *shape, &limits))
                }
                _ => None,
            };
            KernelReport {
                name: f.name.clone(),
                arch: f.arch.clone(),
                total: Counts::of(&f.instructions),
                main_loop: main_loop(f),
                tma_loop: tma_loop(f),
                subroutine_calls: subroutine_calls(f),
                registers: resources.map(|r| r.registers),
                occupancy,
            }
        })
        .collect();
    reports.sort_by(|a, b| (&a.name, &a.arch).cmp(&(&b.name, &b.arch)));
    reports
}

fn json_counts(c: &Counts) -> String {
    let classes: Vec<String> = Class::ALL
        .iter()
        .map(|&class| format!("\"{}\": {}", class.name(), c.get(class)))
        .collect();
    let mufu: Vec<String> = c
        .mufu
        .iter()
        .map(|(k, v)| format!("\"{}\": {v}", k.to_lowercase()))
        .collect();
    let ratio = |r: Option<f64>| r.map_or("null".to_string(), |r| format!("{r:.3}"));
    format!(
        "{{\"total\": {}, {}, \"ldg_128\": {}, \"ldg_64\": {}, \"stg_128\": {}, \"ldgsts_128\": {}, \"calls\": {}, \"mufu_by_function\": {{{}}}, \"non_hmma_per_hmma\": {}, \"ldsm_per_hmma\": {}}}",
        c.total(),
        classes.join(", "),
        c.ldg_128,
        c.ldg_64,
        c.stg_128,
        c.ldgsts_128,
        c.calls,
        mufu.join(", "),
        ratio(c.non_hmma_per_hmma()),
        ratio(c.ldsm_per_hmma())
    )
}

impl KernelReport {
    /// Addresses of the CALLs into slow-path subroutines ([`SubroutineKind::SlowPath`]).
    pub fn slow_path_calls(&self) -> Vec<u32> {
        self.subroutine_calls
            .iter()
            .filter(|c| c.kind == SubroutineKind::SlowPath)
            .map(|c| c.address)
            .collect()
    }

    /// The report as one JSON object (no dependency on a JSON crate; every string here is a kernel,
    /// arch or class name, which need no escaping).
    pub fn to_json(&self) -> String {
        let main_loop = self.main_loop.as_ref().map_or("null".to_string(), |l| {
            format!(
                "{{\"start\": {}, \"end\": {}, \"body\": {}, \"steady_path\": {}}}",
                l.start,
                l.end,
                json_counts(&l.counts),
                json_counts(&l.steady)
            )
        });
        let occupancy = self.occupancy.map_or("null".to_string(), |o| {
            format!(
                "{{\"gpu\": \"{}\", \"blocks_per_sm\": {}, \"limiter\": \"{}\", \"by_registers\": {}, \"by_shared\": {}, \"by_threads\": {}}}",
                o.gpu,
                o.blocks,
                o.limiter(),
                o.by_registers,
                o.by_shared,
                o.by_threads
            )
        });
        let registers = self.registers.map_or("null".to_string(), |r| r.to_string());
        let calls: Vec<String> = self
            .subroutine_calls
            .iter()
            .map(|c| {
                let kind = match c.kind {
                    SubroutineKind::Shuffle => "shuffle",
                    SubroutineKind::SlowPath => "slow_path",
                };
                format!(
                    "{{\"address\": {}, \"target\": {}, \"kind\": \"{kind}\"}}",
                    c.address, c.target
                )
            })
            .collect();
        format!(
            "{{\"kernel\": \"{}\", \"arch\": \"{}\", \"gated\": {}, \"registers\": {}, \"subroutine_calls\": [{}], \"occupancy\": {}, \"main_loop\": {}, \"whole_kernel\": {}}}",
            self.name,
            self.arch,
            is_gated(&self.name),
            registers,
            calls.join(", "),
            occupancy,
            main_loop,
            json_counts(&self.total)
        )
    }
}

/// One line per kernel and arch: the size of the main loop's body, then what its steady path issues per
/// iteration by class, its ratios, the kernel's slow-path calls and its occupancy.
pub fn table(reports: &[KernelReport]) -> String {
    let columns = [
        Class::Hmma,
        Class::Ldsm,
        Class::Ldgsts,
        Class::Ldg,
        Class::Stg,
        Class::Lds,
        Class::Sts,
        Class::Mufu,
        Class::Float,
        Class::Convert,
        Class::IntPred,
        Class::Move,
        Class::Shfl,
        Class::Sync,
        Class::Branch,
    ];
    let mut out = format!("{:<34} {:<7} {:>5} {:>5}", "kernel", "arch", "body", "path");
    for class in columns {
        out += &format!(" {:>6}", class.name());
    }
    out += &format!(
        " {:>6} {:>6} {:>5} {:>9}\n",
        "nonH/H", "ldsm/H", "slow", "ctas/SM"
    );
    for r in reports {
        let c = r.main_loop.as_ref().map(|l| &l.steady);
        let dash = || "-".to_string();
        let ratio = |r: Option<f64>| r.map_or_else(dash, |r| format!("{r:.2}"));
        out += &format!(
            "{:<34} {:<7} {:>5} {:>5}",
            r.name,
            r.arch,
            r.main_loop
                .as_ref()
                .map_or_else(dash, |l| l.counts.total().to_string()),
            c.map_or_else(dash, |c| c.total().to_string())
        );
        for class in columns {
            out += &format!(" {:>6}", c.map_or_else(dash, |c| c.get(class).to_string()));
        }
        out += &format!(
            " {:>6} {:>6} {:>5} {:>9}\n",
            ratio(c.and_then(Counts::non_hmma_per_hmma)),
            ratio(c.and_then(Counts::ldsm_per_hmma)),
            r.slow_path_calls().len(),
            r.occupancy
                .map_or_else(dash, |o| format!("{} {}", o.blocks, o.gpu))
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "
	code for sm_80
		Function : kern
        /*0000*/                   MOV R1, c[0x0][0x28] ;  /* 0x00000a0000017a02 */
                                                           /* 0x000fe40000000f00 */
        /*0010*/                   IADD3 R0, R1, 0x1, RZ ;
        /*0020*/                   LDSM.16.M88.4 R4, [R0] ;
        /*0030*/                   HMMA.16816.F32.BF16 R8, R4, R6, R8 ;
        /*0040*/               @P0 BRA 0x60 ;
        /*0050*/                   HMMA.16816.F32.BF16 R8, R4, R6, R8 ;
        /*0060*/                   LDG.E.128 R4, [R2.64] ;
        /*0070*/              @!P1 BRA 0x20 ;
        /*0080*/              @!P2 CALL.REL.NOINC 0xb0 ;
        /*0090*/                   BRA 0x10 ;
        /*00a0*/                   CALL.REL.NOINC 0xd0 ;
        /*00b0*/                   EXIT ;
        /*00c0*/                   BRA 0xc0;
        /*00d0*/                   MUFU.RCP R0, R1 ;
        /*00e0*/                   RET.REL.NODEC R2 0x0 ;
	code for sm_90a
		Function : kern
        /*0000*/                   EXIT ;
";

    #[test]
    fn parses_functions_per_arch() {
        let functions = parse(LISTING);
        assert_eq!(functions.len(), 2);
        assert_eq!(
            (functions[0].name.as_str(), functions[0].arch.as_str()),
            ("kern", "sm_80")
        );
        assert_eq!(functions[1].arch, "sm_90a");
        assert_eq!(functions[0].instructions.len(), 15);
        let bra = &functions[0].instructions[7];
        assert_eq!(bra.predicate.as_deref(), Some("@!P1"));
        assert_eq!((bra.opcode.as_str(), bra.target()), ("BRA", Some(0x20)));
    }

    #[test]
    fn a_uniform_branch_with_a_predicate_operand_may_fall_through() {
        // sm_100 writes some conditional branches as `BRA.U !UP0, target` (no guard): here one that
        // leaves the body; the steady path must fall through it rather than find no path at all.
        let listing = "
	code for sm_100
		Function : kern
        /*0000*/                   LDGSTS.E.BYPASS.128 [R2], desc[UR4][R4.64] ;
        /*0010*/                   HMMA.16816.F32.BF16 R8, R4, R6, R8 ;
        /*0020*/                   BRA.U !UP0, 0x80 ;
        /*0030*/                   HMMA.16816.F32.BF16 R8, R4, R6, R8 ;
        /*0040*/                   BRA.U UP1, 0x60 ;
        /*0050*/                   MUFU.EX2 R0, R1 ;
        /*0060*/              @!P1 BRA 0x0 ;
        /*0070*/                   EXIT ;
        /*0080*/                   BRA 0x80;
";
        let f = &parse(listing)[0];
        let bra = &f.instructions[2];
        assert!(!bra.always_executes() && bra.target() == Some(0x80));
        assert!(f.instructions[0].always_executes());
        let pt = Instruction {
            address: 0,
            predicate: None,
            opcode: "BRA.U".into(),
            operands: "PT, 0x80".into(),
        };
        assert!(pt.always_executes());
        let l = main_loop(f).expect("the loop");
        assert_eq!((l.start, l.end), (0x0, 0x60));
        // The path skips the MUFU (the branch at 0x40 may be taken) and keeps both HMMA.
        assert_eq!(l.steady.get(Class::Hmma), 2);
        assert_eq!(l.steady.get(Class::Mufu), 0);
        assert_eq!(l.steady.total(), 6);
    }

    #[test]
    fn mbarrier_retries_after_the_exit_are_not_loops() {
        // The consumer loop 0x10 -> 0x50 waits on an mbarrier at 0x20; the retry sits after the EXIT
        // and branches back to 0x20, spanning HGMMA and the epilogue's stores.
        let listing = "
	code for sm_90a
		Function : kern
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0020*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR4+0x28000], R6 ;
        /*0030*/              @!P0 BRA 0x90 ;
        /*0040*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0050*/              @!P1 BRA 0x10 ;
        /*0060*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0070*/                   STG.E [R2.64], R4 ;
        /*0080*/                   EXIT ;
        /*0090*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR4+0x28000], R6 ;
        /*00a0*/              @!P0 BRA 0x90 ;
        /*00b0*/                   BRA 0x30 ;
        /*00c0*/                   BRA 0xc0;
";
        let f = &parse(listing)[0];
        let ends: Vec<u32> = loops(f).iter().map(|l| l.end).collect();
        assert_eq!(ends, [0x50, 0xa0, 0xc0]);
        let l = main_loop(f).expect("the consumer loop");
        assert_eq!(
            (l.start, l.end, l.counts.get(Class::Hgmma)),
            (0x10, 0x50, 2)
        );
    }

    #[test]
    fn main_loop_is_the_innermost_loop_with_hmma() {
        let f = &parse(LISTING)[0];
        assert_eq!(loops(f).len(), 3); // 0x70 -> 0x20, 0x90 -> 0x10, 0xc0 -> 0xc0
        let l = main_loop(f).expect("a loop with HMMA");
        assert_eq!((l.start, l.end), (0x20, 0x70));
        assert_eq!(l.counts.get(Class::Hmma), 2);
        assert_eq!(l.counts.get(Class::Ldsm), 1);
        assert_eq!((l.counts.get(Class::Ldg), l.counts.ldg_128), (1, 1));
        assert_eq!(l.counts.total(), 6);
        assert_eq!(l.counts.non_hmma_per_hmma(), Some(2.0));
        assert_eq!(l.counts.ldsm_per_hmma(), Some(0.5));
        // The steady path takes the predicated branch at 0x40 over the second HMMA.
        assert_eq!(l.steady.total(), 5);
        assert_eq!(l.steady.get(Class::Hmma), 1);
    }

    #[test]
    fn loaded_path_takes_the_table_read_and_optionally_the_math() {
        // A key past the length skips its table read (the zero-fill side, cheaper: the steady path);
        // a warp without real rows skips the math.
        let listing = "
	code for sm_80
		Function : k
        /*0000*/               @P0 BRA 0x30 ;
        /*0010*/                   LDG.E R4, [R2.64] ;
        /*0020*/                   IMAD R5, R4, R6, RZ ;
        /*0030*/                   LDGSTS.E.BYPASS.128.ZFILL [R1], [R2.64], P1 ;
        /*0040*/               @P2 BRA 0x60 ;
        /*0050*/                   HMMA.16816.F32 R0, R4, R6, R0 ;
        /*0060*/              @!P3 BRA 0x0 ;
        /*0070*/                   EXIT ;
";
        let f = &parse(listing)[0];
        let l = main_loop(f).expect("a loop with HMMA");
        assert_eq!((l.steady.total(), l.steady.get(Class::Ldg)), (4, 0));
        assert_eq!((l.loaded.total(), l.loaded.get(Class::Ldg)), (6, 1));
        assert_eq!(l.loaded.get(Class::Hmma), 0);
        assert_eq!(
            (l.loaded_math.total(), l.loaded_math.get(Class::Hmma)),
            (7, 1)
        );
        assert_eq!(l.loaded_math.ldgsts_128, 1);
    }

    #[test]
    fn load_widths_are_counted_apart() {
        let listing = "
	code for sm_80
		Function : k
        /*0000*/                   LDGSTS.E.BYPASS.128.ZFILL [R1], [R2.64], P0 ;
        /*0010*/                   LDGSTS.E.64 [R1+0x10], [R2.64+0x10] ;
        /*0020*/                   LDG.E.128 R4, [R2.64] ;
        /*0030*/                   LDG.E.64 R8, [R2.64] ;
        /*0040*/                   LDG.E R10, [R2.64] ;
        /*0050*/                   LDG.E.U16 R11, [R2.64] ;
        /*0060*/                   EXIT ;
";
        let c = Counts::of(&parse(listing)[0].instructions);
        assert_eq!((c.get(Class::Ldgsts), c.ldgsts_128), (2, 1));
        assert_eq!((c.get(Class::Ldg), c.ldg_128, c.ldg_64), (4, 1, 1));
        assert_eq!(c.ldg_narrow(), 2);
    }

    #[test]
    fn steady_path_prefers_cp_async_then_the_shorter_side() {
        // if (next tile) { 2 instructions, one LDGSTS } else { 1 instruction }; then a skippable
        // mask; a branch out of the loop.
        let listing = "
	code for sm_80
		Function : k
        /*0000*/                   HMMA.16816.F32 R0, R4, R6, R0 ;
        /*0010*/               @P0 BRA 0x50 ;
        /*0020*/                   LDGSTS.E.BYPASS.128 [R1], [R2.64] ;
        /*0030*/                   IADD3 R1, R1, 0x1, RZ ;
        /*0040*/                   BRA 0x60 ;
        /*0050*/                   IADD3 R2, R2, 0x1, RZ ;
        /*0060*/               @P1 BRA 0x80 ;
        /*0070*/                   FMNMX R3, R3, R4, !PT ;
        /*0080*/               @P2 BRA 0x100 ;
        /*0090*/              @!P3 BRA 0x0 ;
        /*00a0*/                   EXIT ;
";
        let f = &parse(listing)[0];
        let l = main_loop(f).expect("loop");
        assert_eq!((l.start, l.end, l.counts.total()), (0x0, 0x90, 10));
        let path: Vec<u32> = steady_path(body(f, l.start, l.end))
            .iter()
            .map(|i| i.address)
            .collect();
        assert_eq!(path, vec![0x0, 0x10, 0x20, 0x30, 0x40, 0x60, 0x80, 0x90]);
        assert_eq!(l.steady.get(Class::Ldgsts), 1);
        assert_eq!(l.steady.get(Class::Float), 0);
    }

    #[test]
    fn only_calls_that_return_are_subroutine_calls() {
        let f = &parse(LISTING)[0];
        let calls = subroutine_calls(f);
        // The loop exit at 0x80 reaches EXIT first; the call at 0xa0 enters code with a MUFU.
        assert_eq!(calls.len(), 1);
        assert_eq!((calls[0].address, calls[0].target), (0xa0, 0xd0));
        assert_eq!(calls[0].kind, SubroutineKind::SlowPath);
    }

    #[test]
    fn a_subroutine_that_only_shuffles_is_not_a_slow_path() {
        let listing = "
	code for sm_80
		Function : k
        /*0000*/                   MOV R16, 0x20 ;
        /*0010*/                   CALL.REL.NOINC 0x30 ;
        /*0020*/                   EXIT ;
        /*0030*/                   HFMA2.MMA R17, -RZ, RZ, 0, 0 ;
        /*0040*/                   WARPSYNC R21 ;
        /*0050*/                   SHFL.BFLY PT, R19, R19, R18, R20 ;
        /*0060*/                   RET.REL.NODEC R16 0x0 ;
";
        let calls = subroutine_calls(&parse(listing)[0]);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].kind, SubroutineKind::Shuffle);
    }

    #[test]
    fn classes() {
        assert_eq!(Class::of("HMMA"), Class::Hmma);
        assert_eq!(Class::of("UIADD3"), Class::IntPred);
        assert_eq!(Class::of("UMOV"), Class::Move);
        assert_eq!(Class::of("IMAD"), Class::IntPred);
        assert_eq!(Class::of("HFMA2"), Class::Float);
        assert_eq!(Class::of("F2FP"), Class::Convert);
        assert_eq!(Class::of("BSYNC"), Class::Branch);
        assert_eq!(Class::of("UTMALDG"), Class::Tma);
        assert_eq!(Class::of("HGMMA"), Class::Hgmma);
        assert_eq!(Class::of("NOP"), Class::Other);
    }

    #[test]
    fn occupancy_formula() {
        // 213 registers -> 216 * 32 = 6912 per warp; 16384 / 6912 = 2 warps per sub-partition, 8 per SM:
        // one 8-warp block. 49 KiB + 1 KiB reserved: 3 blocks by shared memory on an A100.
        let shape = LaunchShape {
            threads: 256,
            dynamic_shared_bytes: 49 * 1024,
        };
        let o = occupancy(213, 0, shape, &A100);
        assert_eq!((o.by_registers, o.by_shared, o.by_threads), (1, 3, 8));
        assert_eq!((o.blocks, o.limiter()), (1, "registers"));
        // 128 registers: 4096 per warp, 4 warps per sub-partition, 16 per SM: two blocks.
        assert_eq!(occupancy(128, 0, shape, &A100).blocks, 2);
        assert_eq!(occupancy(128, 0, shape, &H100).by_shared, 4);
    }
}
