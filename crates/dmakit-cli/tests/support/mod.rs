//! The real `dmakit` binary run on hostile input, bounded in time and memory, and the
//! scenarios that `hostile_inputs.rs` (the fixed behaviour) and
//! `hostile_inputs_controls.rs` (each defect put back) share.

#![allow(dead_code)] // each test file uses part of it

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Address space the binary may take (`prlimit --as`): it must fail cleanly within this.
pub const MEMORY_LIMIT: u64 = 1 << 30;

/// Time one corpus file may take (a debug build, on a loaded 2-core machine).
pub const BUDGET: Duration = Duration::from_secs(30);

/// What a run did.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code (`None`: killed by a signal or by the budget).
    pub code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
    /// Still running when the budget ran out (then killed).
    pub timed_out: bool,
    /// The highest resident set (`VmHWM`, KiB) read from `/proc` while it ran (every
    /// 20 ms; 0 if it ended before the first read).
    pub peak_rss_kib: u64,
}

impl Outcome {
    /// `Err` with the whole outcome unless the run ended with a non-zero exit code and a
    /// one-line `error: ...` containing `expected`, without a panic, a signal or a
    /// timeout.
    pub fn clean_error(&self, expected: &str) -> Result<(), String> {
        let why = if self.timed_out {
            "no answer within the budget"
        } else if self.signal.is_some() {
            "killed by a signal"
        } else if self.code.is_none_or(|c| c == 0) {
            "exit code must be non-zero"
        } else if self.stderr.contains("panicked") {
            "panicked"
        } else if !(self.stderr.starts_with("error: ") && self.stderr.lines().count() == 1) {
            "one `error:` line expected"
        } else if !self.stderr.contains(expected) {
            "stderr lacks the expected text"
        } else {
            return Ok(());
        };
        Err(format!("{why} (`{expected}`): {self:?}"))
    }

    /// Panics with the whole outcome unless [`Outcome::clean_error`] is `Ok`.
    pub fn assert_clean_error(&self, expected: &str) {
        if let Err(e) = self.clean_error(expected) {
            panic!("{e}");
        }
    }

    /// Whether the run ran out of the memory [`run`] allowed: ended by a signal (SIGABRT
    /// from the allocation failure handler, SIGKILL, SIGSEGV), the allocator's message, or
    /// a read that could not grow its buffer (`out of memory`).
    pub fn ran_out_of_memory(&self) -> bool {
        self.signal.is_some()
            || self.stderr.contains("memory allocation of")
            || self.stderr.contains("out of memory")
    }
}

/// Runs `dmakit ARGS` under `prlimit --as=limit`, killed after `budget`. `put_back` names
/// a `dmakit::reintroduce::Defect` the binary puts back (only a binary built with the
/// `reintroduce-defects` feature does).
pub fn run(args: &[&str], put_back: Option<&str>, limit: u64, budget: Duration) -> Outcome {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--as={limit}"))
        .arg(env!("CARGO_BIN_EXE_dmakit"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("DMAKIT_PUT_BACK");
    if let Some(d) = put_back {
        cmd.env("DMAKIT_PUT_BACK", d);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("prlimit (util-linux) runs the binary");
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let (status, timed_out, peak_rss_kib) = wait(&mut child, budget);
    let elapsed = started.elapsed();
    use std::os::unix::process::ExitStatusExt;
    Outcome {
        code: status.code(),
        signal: status.signal(),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        elapsed,
        timed_out,
        peak_rss_kib,
    }
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

fn wait(child: &mut Child, budget: Duration) -> (std::process::ExitStatus, bool, u64) {
    let deadline = Instant::now() + budget;
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        // Read before asking whether it ended: the entry vanishes once it is reaped.
        peak = peak.max(high_water_kib(&status));
        if let Some(s) = child.try_wait().expect("wait for the binary") {
            return (s, false, peak);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return (child.wait().expect("reap the binary"), true, peak);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `VmHWM` of a `/proc/PID/status` file in KiB (0 when unreadable).
fn high_water_kib(status: &str) -> u64 {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The corpus of malformed inputs.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile")
}

/// `(file, expected stderr fragment)` for every line of the corpus manifest, `{path}`
/// replaced by the file's path.
pub fn manifest() -> Vec<(PathBuf, String)> {
    let dir = corpus_dir();
    let text = std::fs::read_to_string(dir.join("MANIFEST")).expect("tests/hostile/MANIFEST");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (file, expect) = l.split_once(" | ").expect("`FILE | EXPECTED` lines");
            let path = dir.join(file.trim());
            let expect = expect.replace("{path}", &path.display().to_string());
            (path, expect)
        })
        .collect()
}

/// Runs one corpus file as a user would: a scenario through `simulate` (briefly, in case
/// it is accepted), a slabinfo through `slab`.
pub fn run_corpus_file(path: &Path, put_back: Option<&str>) -> Outcome {
    let p = path.to_str().expect("utf-8 path");
    if p.ends_with(".slabinfo") {
        run(&["slab", "--slabinfo", p], put_back, MEMORY_LIMIT, BUDGET)
    } else {
        let args = [
            "simulate",
            "--scenario",
            p,
            "--transfers",
            "200",
            "--policy",
            "exact",
        ];
        run(&args, put_back, MEMORY_LIMIT, BUDGET)
    }
}

/// One corpus file by name.
pub fn corpus_file(name: &str) -> PathBuf {
    corpus_dir().join(name)
}

/// `dmakit simulate --scenario /dev/zero` (`slab` false) or `dmakit slab --slabinfo
/// /dev/zero` (`slab` true).
pub fn dev_zero(slab: bool, put_back: Option<&str>) -> Outcome {
    let args: &[&str] = if slab {
        &["slab", "--slabinfo", "/dev/zero"]
    } else {
        &["simulate", "--scenario", "/dev/zero"]
    };
    run(args, put_back, MEMORY_LIMIT, BUDGET)
}

/// A fresh directory for one test.
pub fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dmakit-hostile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// `simulate --report DIR` where DIR cannot be created (a file is in the way), with a
/// scenario whose run fails at its first step (its slabinfo file does not exist): the
/// error says which of the two was checked first.
pub fn report_into_a_file(put_back: Option<&str>) -> Outcome {
    let dir = temp(&format!("report-{}", put_back.unwrap_or("fixed")));
    let blocker = dir.join("not-a-dir");
    std::fs::write(&blocker, "a file").expect("write");
    let missing = dir.join("missing.slabinfo");
    let scenario = dmakit_scenario::DEFAULT_SCENARIO.replacen(
        "slabinfo = \"shipped\"",
        &format!("slabinfo = \"{}\"", missing.display()),
        1,
    );
    assert_ne!(scenario, dmakit_scenario::DEFAULT_SCENARIO);
    let sc = dir.join("scenario.toml");
    std::fs::write(&sc, scenario).expect("write");
    let args = [
        "simulate",
        "--scenario",
        sc.to_str().expect("utf-8"),
        "--transfers",
        "200",
        "--report",
        blocker.to_str().expect("utf-8"),
    ];
    run(&args, put_back, MEMORY_LIMIT, BUDGET)
}

/// Devices in the generated scenario of [`many_devices`].
pub const MANY: usize = 200_000;

/// A scenario of [`MANY`] `[[device]]` entries (as one inline array on line 2, 3.5 MiB),
/// run through `simulate` with `budget`; returns the outcome, the file and the column of
/// `device[4096]`, the first beyond the limit.
pub fn many_devices(put_back: Option<&str>, budget: Duration) -> (Outcome, PathBuf, usize) {
    let dir = temp(&format!("many-{}", put_back.unwrap_or("fixed")));
    let names: Vec<String> = (0..MANY).map(|i| format!("{{name = \"d{i}\"}}")).collect();
    let text = format!(
        "name = \"many\"\ndevice = [{}]\n{}",
        names.join(","),
        "[machine]\ncpus = 2\ncache_line = 64\nram = [{ start = 0, size = \"1 GiB\" }]\n\
         bounce_pool = \"1 MiB\"\n[[driver]]\nname = \"x\"\ndevice = \"d0\"\nweight = 1.0\n\
         [[driver.transfer]]\nsite = \"s\"\ndirection = \"to-device\"\nsize = 64\n\
         buffer = \"kmalloc\"\n"
    );
    let path = dir.join("many.toml");
    std::fs::write(&path, text).expect("write");
    let args = [
        "simulate",
        "--scenario",
        path.to_str().expect("utf-8"),
        "--transfers",
        "200",
    ];
    let column = "device = [".len() + names[..4096].iter().map(|n| n.len() + 1).sum::<usize>() + 1;
    (run(&args, put_back, MEMORY_LIMIT, budget), path, column)
}
