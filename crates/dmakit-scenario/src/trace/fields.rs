//! The payload of each `dma:` event, parsed exactly as the kernel prints it (the `print
//! fmt` of `events/dma/*/format`, Linux 6.18): the device name, then `key=value` fields in
//! a fixed order, separated by one space.
//!
//! Values: `%llx` addresses are hexadecimal without a prefix, `%zu` sizes decimal,
//! `__print_array` arrays `{0x1000,0x2000}` (`{}` when empty; the `unsigned int` sizes of
//! scatter-gather lists are hexadecimal too), `__print_flags` attributes names joined by
//! `|` (empty when none, `0x..` for unnamed bits), `__print_symbolic` directions.
//! Anything else is malformed: the error says which field and what was found.

use super::event::{AllocKind, Event, SgMap, SingleKind, SyncTo, TraceDir};

/// The most entries the kernel records per array (`DMA_TRACE_MAX_ENTRIES`).
pub const MAX_TRACED_ENTRIES: u32 = 128;

/// The fields of one payload, consumed in order.
struct Fields<'a> {
    tokens: std::str::Split<'a, char>,
    event: &'a str,
}

impl<'a> Fields<'a> {
    fn next(&mut self, what: &str) -> Result<&'a str, String> {
        self.tokens
            .next()
            .ok_or_else(|| format!("{}: `{what}` is missing", self.event))
    }

    fn device(&mut self) -> Result<String, String> {
        let d = self.next("device")?;
        if d.is_empty() {
            return Err(format!("{}: the device name is empty", self.event));
        }
        Ok(d.to_string())
    }

    /// The value of `key=...`.
    fn value(&mut self, key: &str) -> Result<&'a str, String> {
        let t = self.next(key)?;
        t.strip_prefix(key)
            .and_then(|r| r.strip_prefix('='))
            .ok_or_else(|| format!("{}: expected `{key}=`, found `{}`", self.event, clip(t)))
    }

    fn dir(&mut self) -> Result<TraceDir, String> {
        let v = self.value("dir")?;
        TraceDir::from_kernel(v).ok_or_else(|| {
            format!(
                "{}: `dir={}` is not BIDIRECTIONAL, TO_DEVICE, FROM_DEVICE or NONE",
                self.event,
                clip(v)
            )
        })
    }

    fn hex(&mut self, key: &str) -> Result<u64, String> {
        let v = self.value(key)?;
        hex_digits(v).ok_or_else(|| self.bad(key, v, "a hexadecimal number"))
    }

    fn dec(&mut self, key: &str) -> Result<u64, String> {
        let v = self.value(key)?;
        dec_digits(v).ok_or_else(|| self.bad(key, v, "a decimal number"))
    }

    fn array(&mut self, key: &str) -> Result<Vec<u64>, String> {
        let v = self.value(key)?;
        parse_array(v).ok_or_else(|| self.bad(key, v, "an array like {0x1000,0x2000}"))
    }

    /// `attrs=`: whether `MMIO` is among them.
    fn attrs(&mut self) -> Result<bool, String> {
        let v = self.value("attrs")?;
        let names: Vec<&str> = if v.is_empty() {
            Vec::new()
        } else {
            v.split('|').collect()
        };
        if names.iter().any(|n| !is_flag(n)) {
            return Err(self.bad("attrs", v, "attribute names joined by `|`"));
        }
        Ok(names.contains(&"MMIO"))
    }

    /// `flags=` of an allocation: GFP flag names joined by `|`, or `none`.
    fn gfp(&mut self) -> Result<(), String> {
        let v = self.value("flags")?;
        if v.is_empty() || v.split('|').any(|n| !is_flag(n)) {
            return Err(self.bad("flags", v, "GFP flag names joined by `|`, or `none`"));
        }
        Ok(())
    }

    /// `virt_addr=%p`: hashed or raw, never needed.
    fn pointer(&mut self) -> Result<(), String> {
        let v = self.value("virt_addr")?;
        if v.is_empty() {
            return Err(self.bad("virt_addr", v, "a pointer"));
        }
        Ok(())
    }

    /// `key=%d/%d` as printed for scatter-gather counts: `min(full, 128)/full`.
    fn count_pair(&mut self, key: &str) -> Result<(u32, u32), String> {
        let v = self.value(key)?;
        let pair = v.split_once('/').and_then(|(a, b)| {
            let (a, b) = (dec_digits(a)?, dec_digits(b)?);
            Some((u32::try_from(a).ok()?, u32::try_from(b).ok()?))
        });
        match pair {
            Some((shown, full)) if shown == full.min(MAX_TRACED_ENTRIES) => Ok((shown, full)),
            Some(_) => Err(self.bad(key, v, "min(n, 128)/n")),
            None => Err(self.bad(key, v, "two counts like 3/3")),
        }
    }

    fn end(mut self) -> Result<(), String> {
        match self.tokens.next() {
            None => Ok(()),
            Some(t) => Err(format!(
                "{}: unexpected `{}` after the last field",
                self.event,
                clip(t)
            )),
        }
    }

    fn bad(&self, key: &str, v: &str, want: &str) -> String {
        format!("{}: `{key}={}` is not {want}", self.event, clip(v))
    }
}

/// At most 40 characters of `s`, for messages.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn is_flag(n: &str) -> bool {
    let name = !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    name || n.strip_prefix("0x").and_then(hex_digits).is_some()
}

fn hex_digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn dec_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `{0x1000,0x2000}` → `[0x1000, 0x2000]`; `{}` → `[]`.
fn parse_array(v: &str) -> Option<Vec<u64>> {
    let inner = v.strip_prefix('{')?.strip_suffix('}')?;
    if inner.is_empty() {
        return Some(Vec::new());
    }
    inner
        .split(',')
        .map(|x| x.strip_prefix("0x").and_then(hex_digits))
        .collect()
}

/// Parses the payload of event `name`; `Ok(None)` when `name` is not a `dma:` event.
///
/// # Errors
/// A message naming the event and the field that is not as the kernel prints it.
pub fn parse_payload(name: &str, payload: &str) -> Result<Option<Event>, String> {
    let map_kind = match name {
        "dma_map_phys" => Some(SingleKind::Phys),
        "dma_map_page" => Some(SingleKind::Page),
        "dma_map_resource" => Some(SingleKind::Resource),
        _ => None,
    };
    let unmap_kind = match name {
        "dma_unmap_phys" => Some(SingleKind::Phys),
        "dma_unmap_page" => Some(SingleKind::Page),
        "dma_unmap_resource" => Some(SingleKind::Resource),
        _ => None,
    };
    let mut f = Fields {
        tokens: payload.split(' '),
        event: name,
    };
    let event = if let Some(kind) = map_kind {
        // "%s dir=%s dma_addr=%llx size=%zu phys_addr=%llx attrs=%s"
        let (device, dir) = (f.device()?, f.dir()?);
        let (dma_addr, size, phys_addr) = (f.hex("dma_addr")?, f.dec("size")?, f.hex("phys_addr")?);
        let mmio = f.attrs()?;
        Event::Map {
            kind,
            device,
            dir,
            dma_addr,
            size,
            phys_addr,
            mmio,
        }
    } else if let Some(kind) = unmap_kind {
        // "%s dir=%s dma_addr=%llx size=%zu attrs=%s"
        let (device, dir) = (f.device()?, f.dir()?);
        let (dma_addr, size) = (f.hex("dma_addr")?, f.dec("size")?);
        f.attrs()?;
        Event::Unmap {
            kind,
            device,
            dir,
            dma_addr,
            size,
        }
    } else {
        match name {
            "dma_map_sg" => map_sg(&mut f)?,
            "dma_map_sg_err" => {
                // "%s dir=%s dma_addrs=%s err=%d attrs=%s"
                let (device, dir) = (f.device()?, f.dir()?);
                let phys_addrs = f.array("dma_addrs")?;
                let v = f.value("err")?;
                let err = v
                    .parse::<i64>()
                    .map_err(|_| f.bad("err", v, "a decimal number"))?;
                f.attrs()?;
                Event::MapSgErr {
                    device,
                    dir,
                    phys_addrs,
                    err,
                }
            }
            "dma_unmap_sg" => {
                // "%s dir=%s phys_addrs=%s attrs=%s"
                let (device, dir) = (f.device()?, f.dir()?);
                let phys_addrs = f.array("phys_addrs")?;
                f.attrs()?;
                Event::UnmapSg {
                    device,
                    dir,
                    phys_addrs,
                }
            }
            "dma_sync_single_for_cpu" | "dma_sync_single_for_device" => {
                // "%s dir=%s dma_addr=%llx size=%zu"
                let (device, dir) = (f.device()?, f.dir()?);
                let (dma_addr, size) = (f.hex("dma_addr")?, f.dec("size")?);
                Event::SyncSingle {
                    to: sync_to(name),
                    device,
                    dir,
                    dma_addr,
                    size,
                }
            }
            "dma_sync_sg_for_cpu" | "dma_sync_sg_for_device" => {
                // "%s dir=%s dma_addrs=%s sizes=%s"
                let (device, dir) = (f.device()?, f.dir()?);
                let (dma_addrs, sizes) = (f.array("dma_addrs")?, f.array("sizes")?);
                if dma_addrs.len() != sizes.len() {
                    return Err(format!(
                        "{name}: {} DMA addresses but {} sizes",
                        dma_addrs.len(),
                        sizes.len()
                    ));
                }
                Event::SyncSg {
                    to: sync_to(name),
                    device,
                    dir,
                    dma_addrs,
                    sizes,
                }
            }
            "dma_alloc" | "dma_alloc_pages" | "dma_alloc_sgt_err" => {
                // "%s dir=%s dma_addr=%llx size=%zu virt_addr=%p flags=%s attrs=%s"
                let (device, dir) = (f.device()?, f.dir()?);
                let (dma_addr, size) = (f.hex("dma_addr")?, f.dec("size")?);
                f.pointer()?;
                f.gfp()?;
                f.attrs()?;
                let kind = match name {
                    "dma_alloc" => AllocKind::Coherent,
                    "dma_alloc_pages" => AllocKind::Pages,
                    _ => AllocKind::SgtErr,
                };
                Event::Alloc {
                    kind,
                    device,
                    dir,
                    dma_addr,
                    size,
                }
            }
            "dma_alloc_sgt" => {
                // "%s dir=%s dma_addr=%llx size=%zu phys_addrs=%s flags=%s attrs=%s"
                let (device, dir) = (f.device()?, f.dir()?);
                let (dma_addr, size) = (f.hex("dma_addr")?, f.dec("size")?);
                f.array("phys_addrs")?;
                f.gfp()?;
                f.attrs()?;
                Event::Alloc {
                    kind: AllocKind::Sgt,
                    device,
                    dir,
                    dma_addr,
                    size,
                }
            }
            "dma_free" | "dma_free_pages" | "dma_free_sgt" => {
                // dma_free, dma_free_pages: "%s dir=%s dma_addr=%llx size=%zu virt_addr=%p attrs=%s"
                // dma_free_sgt: "%s dir=%s dma_addr=%llx size=%zu phys_addrs=%s"
                let (device, dir) = (f.device()?, f.dir()?);
                let (dma_addr, size) = (f.hex("dma_addr")?, f.dec("size")?);
                let kind = if name == "dma_free_sgt" {
                    f.array("phys_addrs")?;
                    AllocKind::Sgt
                } else {
                    f.pointer()?;
                    f.attrs()?;
                    if name == "dma_free" {
                        AllocKind::Coherent
                    } else {
                        AllocKind::Pages
                    }
                };
                Event::Free {
                    kind,
                    device,
                    dir,
                    dma_addr,
                    size,
                }
            }
            _ => return Ok(None),
        }
    };
    f.end()?;
    Ok(Some(event))
}

fn sync_to(name: &str) -> SyncTo {
    if name.ends_with("_for_cpu") {
        SyncTo::Cpu
    } else {
        SyncTo::Device
    }
}

/// "%s dir=%s nents=%d/%d ents=%d/%d%s dma_addrs=%s sizes=%s phys_addrs=%s attrs=%s",
/// the `%s` after `ents` being ` [TRUNCATED]` or nothing. The first kernels with the event
/// (6.12 to 6.15) print no counts and record every entry: "%s dir=%s dma_addrs=%s
/// sizes=%s phys_addrs=%s attrs=%s".
fn map_sg(f: &mut Fields<'_>) -> Result<Event, String> {
    let (device, dir) = (f.device()?, f.dir()?);
    let counted = f
        .tokens
        .clone()
        .next()
        .is_some_and(|t| t.starts_with("nents="));
    let counts = if counted {
        Some((f.count_pair("nents")?, f.count_pair("ents")?))
    } else {
        None
    };
    let truncated =
        counts.is_some_and(|((_, n), (_, e))| n > MAX_TRACED_ENTRIES || e > MAX_TRACED_ENTRIES);
    if truncated {
        let t = f.next("[TRUNCATED]")?;
        if t != "[TRUNCATED]" {
            return Err(format!(
                "dma_map_sg: more than 128 entries but `{}` where `[TRUNCATED]` belongs",
                clip(t)
            ));
        }
    }
    let dma_addrs = f.array("dma_addrs")?;
    let sizes = f.array("sizes")?;
    let phys_addrs = f.array("phys_addrs")?;
    let mmio = f.attrs()?;
    let ((shown_nents, nents), (shown_ents, ents)) = match counts {
        Some(c) => c,
        None => {
            let n = u32::try_from(phys_addrs.len()).unwrap_or(u32::MAX);
            let e = u32::try_from(dma_addrs.len()).unwrap_or(u32::MAX);
            ((n, n), (e, e))
        }
    };
    let lens = [
        ("dma_addrs", dma_addrs.len(), shown_ents),
        ("sizes", sizes.len(), shown_ents),
        ("phys_addrs", phys_addrs.len(), shown_nents),
    ];
    for (what, got, want) in lens {
        if got != want as usize {
            return Err(format!(
                "dma_map_sg: `{what}` holds {got} entries, the counts say {want}"
            ));
        }
    }
    Ok(Event::MapSg(SgMap {
        device,
        dir,
        nents,
        ents,
        truncated,
        dma_addrs,
        sizes,
        phys_addrs,
        mmio,
    }))
}
