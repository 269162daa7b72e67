//! One `[[driver.transfer]]` pattern: directions, sizes, and where its buffer sits
//! (kmalloc object, structure field, page fragment, framebuffer, page).

use dmakit::Direction;
use toml::Spanned;

use crate::config::error::{Ctx, ScenarioError};
use crate::config::spec::{Directions, SizeRange, SizeText, TransferSpec};
use crate::model::{BufferModel, TransferModel};

fn directions(
    cx: &Ctx<'_>,
    f: &str,
    d: &Spanned<Directions>,
) -> Result<Vec<Direction>, ScenarioError> {
    let names: Vec<&String> = match d.get_ref() {
        Directions::One(s) => vec![s],
        Directions::Many(v) => v.iter().collect(),
    };
    let mut out = Vec::new();
    for n in names {
        out.push(match n.as_str() {
            "to-device" => Direction::ToDevice,
            "from-device" => Direction::FromDevice,
            "bidirectional" => Direction::Bidirectional,
            other => {
                return Err(cx.err(
                    d.span(),
                    f,
                    format!("`{other}`: write \"to-device\", \"from-device\" or \"bidirectional\""),
                ))
            }
        });
    }
    if out.is_empty() {
        return Err(cx.err(d.span(), f, "at least one direction"));
    }
    Ok(out)
}

fn size_range(cx: &Ctx<'_>, f: &str, s: &Spanned<SizeRange>) -> Result<(u64, u64), ScenarioError> {
    let one = |t: &SizeText| cx.size(&Spanned::new(s.span(), t.clone()), f);
    let (lo, hi) = match s.get_ref() {
        SizeRange::One(t) => {
            let v = one(t)?;
            (v, v)
        }
        SizeRange::Range(v) if v.len() == 2 => (one(&v[0])?, one(&v[1])?),
        SizeRange::Range(_) => {
            return Err(cx.err(s.span(), f, "write one size or a range [min, max]"));
        }
    };
    if lo == 0 || lo > hi || hi > 256 * 1024 {
        return Err(cx.err(
            s.span(),
            f,
            format!("need 0 < min <= max <= 256 KiB (the largest bounce), got [{lo}, {hi}]"),
        ));
    }
    Ok((lo, hi))
}

fn opt(v: &Option<Spanned<u64>>) -> Option<u64> {
    v.as_ref().map(|s| *s.get_ref())
}

pub(super) fn transfer(
    cx: &Ctx<'_>,
    f: &str,
    t: &Spanned<TransferSpec>,
) -> Result<TransferModel, ScenarioError> {
    let s = t.get_ref();
    let directions = directions(cx, &format!("{f}.direction"), &s.direction)?;
    let size = size_range(cx, &format!("{f}.size"), &s.size)?;
    let step = opt(&s.step).unwrap_or(1);
    if step == 0 || size.0 % step != 0 {
        let span = s.step.as_ref().map_or(s.size.span(), Spanned::span);
        return Err(cx.err(
            span,
            format!("{f}.step"),
            "must be non-zero and divide the smallest size",
        ));
    }
    let chance = s.chance.as_ref().map_or(1.0, |c| *c.get_ref());
    if !(0.0..=1.0).contains(&chance) {
        let span = s.chance.as_ref().map_or(t.span(), Spanned::span);
        return Err(cx.err(
            span,
            format!("{f}.chance"),
            "a probability must be from 0 to 1",
        ));
    }
    let burst = s.burst.as_ref().map_or([8, 64], |b| *b.get_ref());
    if burst[0] == 0 || burst[0] > burst[1] {
        let span = s.burst.as_ref().map_or(t.span(), Spanned::span);
        return Err(cx.err(span, format!("{f}.burst"), "need 0 < min <= max"));
    }
    let buffer = buffer(cx, f, s, size)?;
    let queue_depth = opt(&s.queue_depth).unwrap_or(1);
    let qd_span = s.queue_depth.as_ref().map_or(t.span(), Spanned::span);
    if !(1..=256).contains(&queue_depth) {
        return Err(cx.err(qd_span, format!("{f}.queue_depth"), "must be from 1 to 256"));
    }
    let one_buffer = matches!(
        buffer,
        BufferModel::StructField { .. } | BufferModel::Noncontiguous { .. }
    );
    if queue_depth > 1 && one_buffer {
        return Err(cx.err(
            qd_span,
            format!("{f}.queue_depth"),
            format!(
                "buffer \"{}\" is one buffer reused by every transfer; it cannot be in flight \
                 more than once",
                s.buffer.get_ref()
            ),
        ));
    }
    if matches!(buffer, BufferModel::Noncontiguous { .. })
        && directions.iter().any(|d| *d != Direction::ToDevice)
    {
        return Err(cx.err(
            s.direction.span(),
            format!("{f}.direction"),
            "noncontiguous buffers model scanout: the CPU writes a frame, the device reads it; \
             write direction = \"to-device\"",
        ));
    }
    Ok(TransferModel {
        site: s.site.get_ref().clone(),
        directions,
        size,
        step,
        buffer,
        chance,
        burst: (burst[0], burst[1]),
        queue_depth: queue_depth as usize,
    })
}

fn buffer(
    cx: &Ctx<'_>,
    f: &str,
    s: &TransferSpec,
    size: (u64, u64),
) -> Result<BufferModel, ScenarioError> {
    let bf = format!("{f}.buffer");
    let need = |v: &Option<Spanned<u64>>, name: &str| {
        opt(v).ok_or_else(|| {
            cx.err(
                s.buffer.span(),
                format!("{f}.{name}"),
                format!("buffer \"{}\" needs `{name}`", s.buffer.get_ref()),
            )
        })
    };
    let unused: Vec<(&Option<Spanned<u64>>, &str)> = match s.buffer.get_ref().as_str() {
        "noncontiguous" => vec![
            (&s.struct_size, "struct_size"),
            (&s.offset, "offset"),
            (&s.next_field, "next_field"),
            (&s.align, "align"),
            (&s.headroom, "headroom"),
            (&s.tail, "tail"),
            (&s.in_flight, "in_flight"),
        ],
        "kmalloc" | "dma-kmalloc" | "pages" => vec![
            (&s.frames, "frames"),
            (&s.struct_size, "struct_size"),
            (&s.offset, "offset"),
            (&s.next_field, "next_field"),
            (&s.align, "align"),
            (&s.headroom, "headroom"),
            (&s.tail, "tail"),
            (&s.in_flight, "in_flight"),
        ],
        "struct-field" => vec![
            (&s.frames, "frames"),
            (&s.align, "align"),
            (&s.headroom, "headroom"),
            (&s.tail, "tail"),
            (&s.in_flight, "in_flight"),
        ],
        "page-frag" => vec![
            (&s.frames, "frames"),
            (&s.struct_size, "struct_size"),
            (&s.offset, "offset"),
            (&s.next_field, "next_field"),
        ],
        other => {
            return Err(cx.err(
                s.buffer.span(),
                bf,
                format!(
                    "`{other}`: write \"kmalloc\", \"dma-kmalloc\", \"struct-field\", \"page-frag\", \"pages\" or \"noncontiguous\""
                ),
            ))
        }
    };
    if let Some((v, name)) = unused.into_iter().find(|(v, _)| v.is_some()) {
        let span = v.as_ref().map_or(s.buffer.span(), Spanned::span);
        return Err(cx.err(
            span,
            format!("{f}.{name}"),
            format!(
                "`{name}` does not apply to buffer \"{}\"",
                s.buffer.get_ref()
            ),
        ));
    }
    Ok(match s.buffer.get_ref().as_str() {
        "kmalloc" => BufferModel::Kmalloc,
        "dma-kmalloc" => BufferModel::DmaKmalloc,
        "pages" => BufferModel::Pages,
        "noncontiguous" => {
            let frames = opt(&s.frames).unwrap_or(2);
            if !(1..=8).contains(&frames) {
                let span = s.frames.as_ref().map_or(s.buffer.span(), Spanned::span);
                return Err(cx.err(span, format!("{f}.frames"), "must be from 1 to 8"));
            }
            BufferModel::Noncontiguous {
                frames: frames as usize,
            }
        }
        "struct-field" => {
            let struct_size = need(&s.struct_size, "struct_size")?;
            let offset = need(&s.offset, "offset")?;
            let field_size = size.1;
            // Checked before any arithmetic: the offsets may be anything up to u64::MAX.
            let field_end = offset.saturating_add(field_size);
            let next_field = opt(&s.next_field)
                .unwrap_or_else(|| field_end.checked_next_multiple_of(8).unwrap_or(u64::MAX));
            if offset % 8 != 0
                || struct_size > 8192
                || field_end > next_field
                || next_field > struct_size
            {
                let span = s.offset.as_ref().map_or(s.buffer.span(), Spanned::span);
                return Err(cx.err(
                    span,
                    format!("{f}.offset"),
                    format!(
                        "the field [{offset}, {}) must start 8-byte aligned and fit before next_field \
                         ({next_field}) inside the structure ({struct_size} bytes, at most 8 KiB)",
                        offset.saturating_add(field_size)
                    ),
                ));
            }
            BufferModel::StructField {
                struct_size,
                offset,
                field_size,
                next_field,
            }
        }
        _ => {
            let align = opt(&s.align).unwrap_or(64);
            let headroom = opt(&s.headroom).unwrap_or(0);
            let tail = opt(&s.tail).unwrap_or(0);
            let in_flight = opt(&s.in_flight).unwrap_or(8);
            if !align.is_power_of_two() || !(8..=4096).contains(&align) {
                let span = s.align.as_ref().map_or(s.buffer.span(), Spanned::span);
                return Err(cx.err(
                    span,
                    format!("{f}.align"),
                    "must be a power of two from 8 to 4096",
                ));
            }
            let fragment = headroom
                .checked_add(size.1)
                .and_then(|b| b.checked_add(tail));
            if fragment.is_none_or(|b| b > 16 * 1024) || in_flight > 4096 {
                let span = s.tail.as_ref().map_or(s.buffer.span(), Spanned::span);
                return Err(cx.err(
                    span,
                    format!("{f}.tail"),
                    "a fragment (headroom + size + tail) must fit 16 KiB; in_flight at most 4096",
                ));
            }
            BufferModel::PageFrag {
                align,
                headroom,
                tail,
                in_flight: in_flight as usize,
            }
        }
    })
}
