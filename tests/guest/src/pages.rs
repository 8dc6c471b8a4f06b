//! Pages shared with the hypervisor: 4 KiB-aligned statics. The VMM identity
//! maps RAM, so a static's address is its guest-physical address.

use hypercall::page::{Page, PageRef};

static HYPERCALL: Page = Page::new();
static SIMP: Page = Page::new();
static SIEFP: Page = Page::new();
static TSC: Page = Page::new();
static INPUT: Page = Page::new();
static CRASH: Page = Page::new();
static VMBUS_INPUT: Page = Page::new();
static RING: [Page; RING_PAGES] = [const { Page::new() }; RING_PAGES];
static GPADL: [Page; GPADL_PAGES] = [const { Page::new() }; GPADL_PAGES];

/// Pages of one VMBus channel's rings: guest -> host first, then host -> guest,
/// each a control page and three data pages (12 KiB of ring each).
pub const RING_PAGES: usize = 8;
/// Pages of the GPADL that is only created and torn down: more than a GPADL
/// header holds (26 PFNs), so a body message is needed.
pub const GPADL_PAGES: usize = 32;

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

/// Hypercall input page of the VMBus driver (its SINT2 interrupt routine posts
/// messages, so it must not share the checks' input page).
pub fn vmbus_input() -> PageRef<'static> {
    PageRef::identity_mapped(&VMBUS_INPUT)
}

/// The VMBus ring pages (the same pages serve each channel opened in turn).
pub fn ring() -> [PageRef<'static>; RING_PAGES] {
    vmbus_guest::ring::identity_mapped_refs(&RING)
}

/// The pages of the multi-page GPADL.
pub fn gpadl() -> [PageRef<'static>; GPADL_PAGES] {
    vmbus_guest::ring::identity_mapped_refs(&GPADL)
}
