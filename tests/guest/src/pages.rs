//! Pages shared with the hypervisor: 4 KiB-aligned statics. The VMM identity
//! maps RAM, so a static's address is its guest-physical address.

use hypercall::page::{Page, PageRef};

static HYPERCALL: Page = Page::new();
static SIMP: Page = Page::new();
static SIEFP: Page = Page::new();
static TSC: Page = Page::new();
static INPUT: Page = Page::new();
static CRASH: Page = Page::new();

/// The hypercall page (the hypervisor overlays its code here).
pub fn hypercall() -> PageRef<'static> {
    PageRef::identity_mapped(&HYPERCALL)
}

/// The SynIC message page.
pub fn simp() -> PageRef<'static> {
    PageRef::identity_mapped(&SIMP)
}

/// The SynIC event-flags page.
pub fn siefp() -> PageRef<'static> {
    PageRef::identity_mapped(&SIEFP)
}

/// The reference TSC page.
pub fn tsc() -> PageRef<'static> {
    PageRef::identity_mapped(&TSC)
}

/// Hypercall input page (one caller at a time: only the BSP runs checks).
pub fn input() -> PageRef<'static> {
    PageRef::identity_mapped(&INPUT)
}

/// Page for the crash message handed to the host on panic.
pub fn crash() -> PageRef<'static> {
    PageRef::identity_mapped(&CRASH)
}
