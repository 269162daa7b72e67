//! One line of the kernel's trace text, split into its parts.
//!
//! The `trace` file (and `trace_pipe`) print each entry as
//! `TASK-PID [CPU] FLAGS TIMESTAMP: EVENT: PAYLOAD`, the flags column only with the
//! `irq-info` option (the default), `TASK-PID (TGID)` with `record-tgid`; `trace-cmd report` prints the same without flags,
//! padding the payload with spaces. A `stacktrace` trigger adds an entry `<stack trace>`
//! (`kernel_stack: <stack trace >` in `trace-cmd report`) followed by one line per frame,
//! ` => function` (`=> function (address)` in `trace-cmd report`). Headers start with `#`;
//! a CPU whose buffer overflowed prints `CPU:N [LOST M EVENTS]`.

/// What a line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// Empty, a `#` header, or a `trace-cmd report` header (`cpus=N`, `version = N`,
    /// `CPU N is empty`).
    Header,
    /// `CPU:N [LOST M EVENTS]`: the ring buffer dropped `events` entries.
    Lost {
        /// Entries lost.
        events: u64,
    },
    /// A stack frame: the function, as printed.
    Frame(&'a str),
    /// The `<stack trace>` entry recorded on `cpu`.
    Stack {
        /// The CPU.
        cpu: u32,
    },
    /// An event entry.
    Entry {
        /// The CPU that recorded it.
        cpu: u32,
        /// The event name (`dma_map_phys`).
        name: &'a str,
        /// What follows `name: `.
        payload: &'a str,
    },
    /// An entry of a tracer that prints no event name (the function tracer's
    /// `func <-caller`, ...).
    Other,
}

/// The largest CPU number accepted.
pub const MAX_CPU: u32 = 1023;

/// Splits `line` (without its newline).
///
/// # Errors
/// A message saying what is missing when the line is none of the forms above.
pub fn classify(line: &str) -> Result<Line<'_>, String> {
    let trimmed = line.trim_start();
    if let Some(frame) = trimmed.strip_prefix("=> ") {
        return Ok(Line::Frame(frame.trim_end()));
    }
    if trimmed.is_empty()
        || trimmed.starts_with('#')
        || trimmed.starts_with("cpus=")
        || trimmed.starts_with("version = ")
        || (trimmed.starts_with("CPU ") && trimmed.ends_with(" is empty"))
    {
        return Ok(Line::Header);
    }
    if let Some(rest) = trimmed.strip_prefix("CPU:") {
        let events = rest
            .split_once(" [LOST ")
            .and_then(|(_, n)| n.strip_suffix(" EVENTS]"))
            .and_then(|n| n.parse().ok())
            .ok_or("a `CPU:` line that is not `CPU:N [LOST M EVENTS]`")?;
        return Ok(Line::Lost { events });
    }
    let (cpu, after) = cpu_field(line)?;
    let rest = timestamp_end(after)?.trim_start();
    if rest.starts_with("<stack trace") {
        return Ok(Line::Stack { cpu });
    }
    let name_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    let (name, tail) = rest.split_at(name_len);
    let Some(payload) = tail.strip_prefix(':') else {
        return Ok(Line::Other);
    };
    let payload = payload.trim_start_matches(' ');
    if name == "kernel_stack" && payload.starts_with("<stack trace") {
        return Ok(Line::Stack { cpu });
    }
    if name.is_empty() {
        return Ok(Line::Other);
    }
    Ok(Line::Entry { cpu, name, payload })
}

/// Finds ` [NNN]` after `TASK-PID` (task names may hold spaces and dashes; the PID is the
/// digits after the last dash before the CPU field). Returns the CPU and what follows.
fn cpu_field(line: &str) -> Result<(u32, &str), String> {
    let mut from = 0;
    while let Some(i) = line[from..].find('[').map(|i| i + from) {
        from = i + 1;
        let Some(close) = line[from..].find(']').map(|c| c + from) else {
            break;
        };
        let digits = &line[from..close];
        if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let mut task_pid = line[..i].trim_end();
        // The `record-tgid` option adds the thread group: `TASK-PID (TGID)`.
        if let Some((tp, _)) = task_pid.strip_suffix(')').and_then(|t| t.rsplit_once(" (")) {
            task_pid = tp.trim_end();
        }
        let pid_ok = task_pid
            .rsplit_once('-')
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if !pid_ok || !line[..i].ends_with(char::is_whitespace) {
            continue;
        }
        let cpu: u32 = digits.parse().map_err(|_| "a CPU number out of range")?;
        if cpu > MAX_CPU {
            return Err(format!("CPU {cpu} is above {MAX_CPU}"));
        }
        return Ok((cpu, &line[close + 1..]));
    }
    Err(
        "not a trace entry (`TASK-PID [CPU] ... TIMESTAMP: EVENT: ...`), a header or a stack frame"
            .into(),
    )
}

/// Skips the optional flags column and the `SECONDS.MICROS:` timestamp.
fn timestamp_end(after: &str) -> Result<&str, String> {
    let mut rest = after.trim_start();
    for _ in 0..2 {
        let (tok, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        if let Some(ts) = tok.strip_suffix(':') {
            let (secs, frac) = ts.split_once('.').unwrap_or((ts, "0"));
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if digits(secs) && digits(frac) {
                return Ok(tail);
            }
        }
        rest = tail.trim_start();
    }
    Err("no `SECONDS.MICROSECONDS:` timestamp after the CPU field".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_file_and_trace_cmd_lines() {
        let l = "            bash-26349   [001] .....  3257.636470: kmalloc: call_site=x ptr=0";
        assert_eq!(
            classify(l),
            Ok(Line::Entry {
                cpu: 1,
                name: "kmalloc",
                payload: "call_site=x ptr=0"
            })
        );
        let cmd = "  kworker/u8:2-117   [003]   12.000001: dma_map_phys:         usb dir=NONE";
        assert_eq!(
            classify(cmd),
            Ok(Line::Entry {
                cpu: 3,
                name: "dma_map_phys",
                payload: "usb dir=NONE"
            })
        );
        let stack = "           sleep-26351   [001] .....  3257.637253: <stack trace>";
        assert_eq!(classify(stack), Ok(Line::Stack { cpu: 1 }));
        let cmd_stack = "  a b-7 [000]  1.5: kernel_stack:         <stack trace >";
        assert_eq!(classify(cmd_stack), Ok(Line::Stack { cpu: 0 }));
        assert_eq!(classify(" => dup_fd"), Ok(Line::Frame("dup_fd")));
        assert_eq!(classify("=> f (ffff0001)"), Ok(Line::Frame("f (ffff0001)")));
        assert_eq!(classify("# tracer: nop"), Ok(Line::Header));
        assert_eq!(classify("cpus=4"), Ok(Line::Header));
        assert_eq!(
            classify("CPU:2 [LOST 1234 EVENTS]"),
            Ok(Line::Lost { events: 1234 })
        );
        let func = "  <idle>-0 [000] d.h. 230.859943: do_timer <-tick_do_update_jiffies64";
        assert_eq!(classify(func), Ok(Line::Other));
        let tgid = "  bash-4242    (   4240) [001] ..... 1.000000: dma_unmap_phys: d";
        assert!(matches!(classify(tgid), Ok(Line::Entry { cpu: 1, .. })));
        // A task name holding a bracketed number and dashes.
        let odd = "  my-[12]-task-99 [002] ..... 1.000000: dma_unmap_phys: d";
        assert!(matches!(classify(odd), Ok(Line::Entry { cpu: 2, .. })));
    }

    #[test]
    fn what_is_not_a_line_is_said() {
        for bad in [
            "hello",
            "x-1 [001] nope",
            "x-1 [9999] ..... 1.0: e: p",
            "CPU:1 lost",
        ] {
            assert!(classify(bad).is_err(), "{bad}");
        }
    }
}
