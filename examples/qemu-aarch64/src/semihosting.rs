//! Ending the run: Arm semihosting's SYS_EXIT, which QEMU (`-semihosting`) turns into its
//! own exit status.

/// The semihosting operation number of SYS_EXIT.
const SYS_EXIT: u64 = 0x18;
/// The exit reason "application exit" (ADP_Stopped_ApplicationExit), whose subcode is the
/// status.
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x2_0026;

/// Stops the machine; QEMU exits with `status`.
pub fn exit(status: u32) -> ! {
    let block = [ADP_STOPPED_APPLICATION_EXIT, u64::from(status)];
    // SAFETY: `hlt #0xf000` is the AArch64 semihosting call; with x0 = SYS_EXIT it reads
    // the two-word parameter block at x1, which lives on this stack frame, and does not
    // return when QEMU runs with semihosting. Without semihosting it traps, and the
    // exception handler reports it.
    unsafe {
        core::arch::asm!(
            "hlt #0xf000",
            in("x0") SYS_EXIT,
            in("x1") block.as_ptr(),
            options(nostack, readonly)
        );
    }
    // Not reached under QEMU with semihosting.
    loop {
        core::hint::spin_loop();
    }
}
