//! The entry point: from QEMU's reset state to Rust with the MMU and caches on.
//!
//! `_start` parks every CPU but the first, drops from EL2 to EL1 if it was entered at EL2,
//! sets the stack, enables the FP/SIMD registers (Rust code uses them), zeroes the BSS,
//! installs the exception vectors, builds an identity map and turns the MMU, the data cache
//! and the instruction cache on (SCTLR_EL1 M, C, I), then calls [`crate::kmain`].
//!
//! The identity map (4 KiB granule, 32-bit virtual addresses, walk starting at level 1):
//! the first GiB (UART, virtio-mmio, every other device) is Device-nGnRnE; the second GiB
//! (RAM) is 2 MiB blocks of normal write-back memory, except the blocks of
//! [`layout::COHERENT_WINDOW`], which are normal non-cacheable and never executable.
//! The tables are written before the MMU is on, so they are in memory, not in a cache.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::layout;

/// MAIR_EL1: attribute 0 Device-nGnRnE (0x00), 1 normal write-back (read/write allocate),
/// 2 normal non-cacheable.
const MAIR: u64 = (0xff << 8) | (0x44 << 16);
/// TCR_EL1: T0SZ = 32 (4 GiB), inner/outer write-back walks, inner shareable, 4 KiB
/// granule, no TTBR1 walks (EPD1), 32-bit physical addresses.
const TCR: u64 = 32 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23);
/// Block descriptor bits: valid block, access flag.
const BLOCK: u64 = 0b01 | (1 << 10);
/// Execute-never at EL0 and EL1 (UXN, PXN).
const XN: u64 = (1 << 54) | (1 << 53);
/// A 1 GiB block of device memory.
const DEVICE_BLOCK: u64 = BLOCK | XN;
/// A 2 MiB block of normal write-back, inner shareable memory.
const NORMAL_BLOCK: u64 = BLOCK | (1 << 2) | (3 << 8);
/// A 2 MiB block of normal non-cacheable memory.
const UNCACHED_BLOCK: u64 = BLOCK | (2 << 2) | (3 << 8) | XN;
/// SCTLR_EL1 bits set: M (MMU), C (data cache), I (instruction cache).
const SCTLR_SET: u64 = 1 | (1 << 2) | (1 << 12);
/// SCTLR_EL1 bits cleared: A (alignment faults), WXN.
const SCTLR_CLEAR: u64 = (1 << 1) | (1 << 19);

global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    mrs     x0, mpidr_el1
    and     x0, x0, #0xff
    cbz     x0, 2f
1:  wfe
    b       1b
2:  mrs     x0, CurrentEL
    lsr     x0, x0, #2
    cmp     x0, #2
    b.ne    3f
    // Entered at EL2: run EL1 in AArch64 with every interrupt masked.
    mov     x0, #(1 << 31)
    msr     hcr_el2, x0
    mov     x0, #0x3c5
    msr     spsr_el2, x0
    adr     x0, 3f
    msr     elr_el2, x0
    eret
3:  ldr     x0, =__stack_top
    mov     sp, x0
    mov     x0, #(3 << 20)
    msr     cpacr_el1, x0
    isb
    ldr     x0, =__bss_start
    ldr     x1, =__bss_end
4:  cmp     x0, x1
    b.hs    5f
    str     xzr, [x0], #8
    b       4b
5:  ldr     x0, =exception_vectors
    msr     vbar_el1, x0
    isb

    // Level 1: GiB 0 is device memory, GiB 1 (RAM) points at the level 2 table.
    ldr     x0, =l1_table
    ldr     x1, =l2_table
    ldr     x2, ={device_block}
    str     x2, [x0]
    orr     x2, x1, #3
    str     x2, [x0, #8]
    // Level 2: 512 blocks of 2 MiB from {ram}, the coherent window uncached.
    mov     x3, #0
    ldr     x4, ={ram}
    ldr     x5, ={window_start}
    ldr     x6, ={window_end}
6:  ldr     x2, ={normal_block}
    cmp     x4, x5
    b.lo    7f
    cmp     x4, x6
    b.hs    7f
    ldr     x2, ={uncached_block}
7:  orr     x2, x2, x4
    str     x2, [x1, x3, lsl #3]
    add     x4, x4, #0x200000
    add     x3, x3, #1
    cmp     x3, #512
    b.lo    6b

    ldr     x2, ={mair}
    msr     mair_el1, x2
    ldr     x2, ={tcr}
    msr     tcr_el1, x2
    msr     ttbr0_el1, x0
    dsb     sy
    isb
    tlbi    vmalle1
    dsb     sy
    isb
    mrs     x2, sctlr_el1
    ldr     x3, ={sctlr_set}
    orr     x2, x2, x3
    ldr     x3, ={sctlr_clear}
    bic     x2, x2, x3
    msr     sctlr_el1, x2
    isb
    bl      {kmain}
8:  wfe
    b       8b

    // Every exception is fatal: the handler reports it and exits with a failure.
    .balign 0x800
exception_vectors:
    .irp    kind, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .balign 0x80
    mov     x0, #\kind
    b       exception_common
    .endr
exception_common:
    mrs     x1, esr_el1
    mrs     x2, elr_el1
    mrs     x3, far_el1
    bl      {exception}
9:  b       9b

    .section .bss.page_tables, "aw", @nobits
    .balign 4096
l1_table:
    .space  4096
l2_table:
    .space  4096
    .balign 16
__stack_bottom:
    .space  0x40000
__stack_top:
    "#,
    device_block = const DEVICE_BLOCK,
    normal_block = const NORMAL_BLOCK,
    uncached_block = const UNCACHED_BLOCK,
    ram = const layout::RAM.start,
    window_start = const layout::COHERENT_WINDOW.start,
    window_end = const layout::COHERENT_WINDOW.end(),
    mair = const MAIR,
    tcr = const TCR,
    sctlr_set = const SCTLR_SET,
    sctlr_clear = const SCTLR_CLEAR,
    kmain = sym crate::kmain,
    exception = sym exception,
);

/// Called by the exception vectors with the vector's index (0-15: current EL with SP0,
/// current EL with SPx, lower EL AArch64, lower EL AArch32; each sync, IRQ, FIQ, SError)
/// and the syndrome, return address and fault address registers. Nothing is expected to
/// trap, so any exception is a failure of the run.
///
/// Without semihosting the exit itself traps; the second entry then parks the CPU (the
/// script's timeout ends the run).
extern "C" fn exception(kind: u64, esr: u64, elr: u64, far: u64) -> ! {
    static ENTERED: AtomicBool = AtomicBool::new(false);
    if ENTERED.swap(true, Ordering::SeqCst) {
        loop {
            core::hint::spin_loop();
        }
    }
    crate::println!(
        "FAIL: unexpected exception (vector {kind}): ESR_EL1 {esr:#x} ELR_EL1 {elr:#x} FAR_EL1 {far:#x}"
    );
    crate::semihosting::exit(1)
}
